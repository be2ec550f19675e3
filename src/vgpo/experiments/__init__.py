"""What a person reads after runs: studies over methods, KL settings and seeds (`study`, `study_plots`), the HTML
report and sample grids (`report`), experiment trackers (`loggers`), and the quality suite of a run side by side
with its base model (`quality_comparison`)."""
