"""One thin script per figure or table of the paper; ``python -m paper_figures all`` runs them all
and writes ``paper_figures/RESULTS.md`` (the logic lives in :mod:`lipbound.reproduce`)."""
