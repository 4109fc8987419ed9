# One image for every service; compose.yaml picks the service with its command.
FROM python:3.11-slim
WORKDIR /app
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY shared shared
COPY services services
COPY weightflow weightflow
COPY bench bench
COPY examples examples
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["weightflow"]
