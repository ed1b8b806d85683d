"""Framework adapters (Detectron2, Keras, TF Object Detection API). Each module imports its
framework only when imported itself, so ``import cvops`` stays light."""
