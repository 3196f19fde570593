"""python export.py [key=value ...]: export a trained model to ONNX or TorchScript;
the app is segkit/cli/export.py."""

from segkit.cli.export import main

if __name__ == "__main__":
    main()
