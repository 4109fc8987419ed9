"""The routes of `weightflow serve`, one router per audience: operations (health), OpenAI's, weightflow's own."""
