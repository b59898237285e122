"""The sbatch templates of ``sergraph slurm`` (shipped in the wheel as ``sergraph.slurm``)."""
