"""python eval.py [key=value ...]: score a trained checkpoint on a split;
the app is segkit/cli/eval.py."""

from segkit.cli.eval import main

if __name__ == "__main__":
    main()
