"""python train.py [key=value ...]: fit and score a model;
the app is segkit/cli/train.py."""

from segkit.cli.train import main

if __name__ == "__main__":
    main()
