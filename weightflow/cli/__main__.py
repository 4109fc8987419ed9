from weightflow.cli import main

main()
