"""Fine-tune on a photo folder from Python, then print the flower report's per-epoch table.

python examples/train_and_inspect.py                          # the embedded sample photos
python examples/train_and_inspect.py photos/ resnet50
python examples/train_and_inspect.py photos/ resnet18 --epochs 5 --size 128 --no-pretrained
"""

import argparse

import flowerfast


def main() -> None:
    ap = argparse.ArgumentParser(description="Fine-tune and print the per-epoch table.")
    ap.add_argument("data", nargs="?", default=None, help="folder of class folders (default: the embedded sample)")
    ap.add_argument("arch", nargs="?", default="resnet18")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--no-pretrained", dest="pretrained", action="store_const", const=False, default=None)
    args = ap.parse_args()
    result = flowerfast.train(
        data=args.data, arch=args.arch, epochs=args.epochs, size=args.size, bs=32, pretrained=args.pretrained
    )
    print(f"run folder: {result.run_dir}  (pretrained weights: {result.pretrained})")
    print(f"{'epoch':>5} {'train acc (aug)':>16} {'train acc (clean)':>18} {'valid acc':>10} {'train loss':>11}")
    for e in result.history:
        print(
            f"{e.epoch:>5} {e.train_accuracy_aug:>16.1%} {e.train_accuracy_clean:>18.1%} "
            f"{e.valid_accuracy:>10.1%} {e.train_loss:>11.4f}"
        )
    print(f"best valid accuracy {result.best_valid_accuracy:.1%} at epoch {result.best_epoch}")


if __name__ == "__main__":
    main()
