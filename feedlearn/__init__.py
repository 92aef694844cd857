"""feedlearn: teach language models from feedback.

The packages and top-level modules stand in layers, lowest first. A module imports from lower layers and
from its own package, never from a higher layer or from another package of its own layer
(`tests/test_layers.py` checks it):

    layer 1: errors seeds cache losses trackers stats resources
                                                   no feedlearn imports: errors, seeds by purpose, the cache
                                                   folder, loss functions, experiment trackers, standard
                                                   errors, peak memory
    layer 2: processes                             the process group of a data-parallel run
    layer 3: data                                  records, JSONL files, the run folder, datasets exports
    layer 4: config models                         recipes from YAML; model loading, templates, tiny models
    layer 5: backends                              generation behind one interface (local, vLLM, an API)
    layer 6: verifiers                             is an output right, by rule (math answers, verbal feedback)
    layer 7: tasks                                 task data: problem sets and synthetic task generators
    layer 8: envs                                  environments (text environments, Crafter) and their players
    layer 9: teachers judges                       who writes training data; who compares or grades responses
    layer 10: feedback                             signals to learn from: preference labels, comprehension
    layer 11: training                             the optimization loop, batches, scoring
    layer 12: methods                              one folder per method: config, stages, layout; the registry
    layer 13: report report_page recipe_docs serve presentation: tables, plots, recipe docs, serving
    layer 14: demo                                 the offline RISE demo
    layer 15: cli                                  the `feedlearn` command
"""

__version__ = "0.1.0"
