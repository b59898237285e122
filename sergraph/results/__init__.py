"""Results: the run layout (one owner of paths and of "finished"), summaries, reports and
nested selection."""
