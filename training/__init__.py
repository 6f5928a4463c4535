"""Medical SAM3 training: the paper's full fine-tune of SAM3 (``torchrun -m training.run``), evaluation
(``python -m training.evaluate``) and the recipe of the bundled demo model (``python -m training.make_demo_model``)."""
