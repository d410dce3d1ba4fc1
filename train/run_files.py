"""The names of a run folder's files (runs/NAME/): one place for what train_model.py writes
and what prediction, export and the run checks read. Plain names, no Keras: prediction's
worker processes import this module too.

What each holds is listed in train/train_model.py's docstring and the README.
"""

CONFIG = "config.json"  # written first: it marks the folder as a training run's
PARAMS = "params.json"  # the front end's parameters, as the training data was made
CLASSES = "classes.json"  # the class of each model output
MODEL_SOURCE = "model.py"  # the model file's copy, to rebuild and compare on --resume
SPLIT = "split.json"  # the recordings of each split
DONE = "training_done.json"  # written when fit() ends; training is then not resumed again
INFERENCE = "inference.json"  # the model file and pooling that prediction uses
THRESHOLDS = "thresholds.json"  # per-class decision thresholds (train/thresholds.py)
BEST_VAL_MAP = "best_val_map.keras"  # the best model by validation MAP: the 2016 recipe's
FINAL = "final.keras"  # the model as training left it: the modern recipe's
METRICS = "metrics.json"  # the test scores; written last, so doall.sh takes it for all done
BEST_VAL_LOSS = "best_val_loss.keras"  # the best model by validation loss
BEST_VAL_ACCURACY = "best_val_accuracy.keras"  # the best model by validation accuracy
HISTORY = "history.csv"  # every epoch's metrics, appended to as training goes
BACKUP = "backup"  # the folder of the training state a resumed run continues from
LOCK = ".lock"  # held by the training run writing the folder
