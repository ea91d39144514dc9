"""abexrat: hyperparameter searches and ablation studies of ABEX-RAT.

The data flow, one module per stage: data -> augment -> embed -> train -> study -> report.
"""

__version__ = "0.1.0"
