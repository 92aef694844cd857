"""Environments: text environments with a gymnasium-like reset / step interface (math, DangerousTaxi,
AutoExplore, ALFWorld) and Crafter, with their scripted players and the catalog that builds them by name."""
