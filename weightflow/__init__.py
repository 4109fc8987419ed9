"""weightflow: select, fit, tune, register, ship and watch a model as an event-driven workflow."""
