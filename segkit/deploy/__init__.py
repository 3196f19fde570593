"""A trained model out of its run: export to ONNX and TorchScript (with predict.py's CPU
backends), predict.py's run (``predictor``: which model runs on which backend), and a run
published as a small result folder (``model.pt``, report, samples).

Above ``engine``: each reads the checkpoints that ``engine`` writes and loads.
"""
