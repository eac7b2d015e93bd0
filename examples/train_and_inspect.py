"""Fine-tune on a photo folder from Python, then print the flower report's per-epoch table.

    python examples/train_and_inspect.py                 # the embedded sample photos
    python examples/train_and_inspect.py photos/ resnet50
"""

import sys

import flowerfast


def main() -> None:
    data = sys.argv[1] if len(sys.argv) > 1 else None
    arch = sys.argv[2] if len(sys.argv) > 2 else "resnet18"
    result = flowerfast.train(data=data, arch=arch, epochs=3, size=96, bs=32)
    print(f"run folder: {result.run_dir}  (pretrained weights: {result.pretrained})")
    print(f"{'epoch':>5} {'train acc (aug)':>16} {'train acc (clean)':>18} {'valid acc':>10} {'train loss':>11}")
    for e in result.history:
        print(f"{e.epoch:>5} {e.train_accuracy_aug:>16.1%} {e.train_accuracy_clean:>18.1%} "
              f"{e.valid_accuracy:>10.1%} {e.train_loss:>11.4f}")
    print(f"best valid accuracy {result.best_valid_accuracy:.1%} at epoch {result.best_epoch}")


if __name__ == "__main__":
    main()
