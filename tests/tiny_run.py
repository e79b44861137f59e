"""The tiny training run the trainer's tests share, as -o overrides of configs/demo/se_resnet20_digits.yaml:
SE-ResNet-20 on 64 synthetic 16 px images in 4 classes, batch 16 (4 steps an epoch), 2 epochs, no loader
workers, fp32."""

TINY_RUN = {
    "model.arch": "se_resnet20",
    "model.num_classes": "4",
    "model.se.reduction": "4",
    "data.name": "synthetic",
    "data.image_size": "16",
    "data.eval_crop": "16",
    "data.synthetic_train_size": "64",
    "data.synthetic_val_size": "24",
    "data.batch_size": "16",
    "data.num_workers": "0",
    "train.log_every": "2",
    "train.epochs": "2",
    "lr_scheduler.name": "cosine",
    "optimizer.lr": "0.8",
    "train.amp.enabled": "false",
}


def tiny(*changes: str) -> list[str]:
    """TINY_RUN as `key=value` overrides, with each of `changes` ("key=value") replacing its key in place."""
    run = dict(TINY_RUN)
    for change in changes:
        key, value = change.split("=", 1)
        run[key] = value
    return [f"{k}={v}" for k, v in run.items()]
