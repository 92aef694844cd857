"""Training on accelerate: tokenized datasets, collators, and the optimization loop."""
