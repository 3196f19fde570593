"""python predict.py [key=value ...]: segment images with a trained model;
the app is segkit/cli/predict.py."""

from segkit.cli.predict import main

if __name__ == "__main__":
    main()
