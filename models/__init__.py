"""Text towers, prompt learner, TGDF, hierarchical graph + GNN, losses, HiVE-MIL and baselines."""
