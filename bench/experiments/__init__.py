"""The paper's experiments on the toy world, resumable per cell; committed results in results/."""
