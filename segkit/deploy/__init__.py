"""A trained model out of its run: export to ONNX and TorchScript (with predict.py's CPU
backends), and a run published as a small result folder (``model.pt``, report, samples).

Above ``engine``: both start from a checkpoint that ``engine.checkpoints`` reads.
"""
