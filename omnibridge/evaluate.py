"""Entry point: `python -m omnibridge.evaluate --model assets/omnibridge-shapes --out report.json`."""

from omnibridge.evaluation.evaluate import main

if __name__ == "__main__":
    main()
