"""HiVE-MIL, one module per mechanism: prompt learner, TGDF, graph, attention, GNN, slide logits, HTCL, model."""
