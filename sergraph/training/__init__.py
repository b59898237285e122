"""Training: the LightningModule, fitting one cell (neural or classic), studies of cells,
distributed helpers, experiment tracking and SLURM job scripts."""
