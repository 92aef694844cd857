"""One folder per method, each holding everything the method is: `config.py` (its recipe), `stages.py`
(its `Method` subclass, one method per stage), `layout.py` (its run folder and sampling keys), `figure.py`
(its report figure), and its objective, rollouts, data or play. `common.py` and `layout.py` here hold
what every method shares; `registry.py` lists them by name for the CLI, `serve` and `report`."""
