"""The seed-style baseline loop: every epoch decodes, resizes and runs the frozen tf_efficientnet_lite0
over all posters, then updates a linear head (what the student seeds did, in a plain PyTorch loop).

    python benchmarks/plain_loop.py POSTERS_FOLDER EPOCHS     # prints one JSON line
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def plain_loop(data: Path, epochs: int) -> dict:
    """The seed-style baseline, run in this process."""
    import timm
    import torch
    from PIL import Image

    from posterlab.config import LabelConfig
    from posterlab.data.labels import apply_rule, resolve_rule
    from posterlab.data.sources import load_dataset
    from posterlab.models.factory import create_model

    torch.manual_seed(0)
    frame = load_dataset(data).frame
    labelled = apply_rule(frame, resolve_rule(frame, LabelConfig(top_n=6)))
    model = create_model("tf_efficientnet_lite0", 6, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model.backbone))
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    y = torch.from_numpy(labelled.y)
    paths = labelled.frame["image"].tolist()
    started = time.monotonic()
    for _ in range(epochs):
        for start in range(0, len(paths), 32):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start : start + 32]])
            with torch.no_grad():
                features = model.backbone(batch)
            loss = loss_fn(model.head(features), y[start : start + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.monotonic() - started
    return {
        "seconds": seconds,
        "posters": len(paths),
        "epochs": epochs,
        "posters_per_second": len(paths) * epochs / seconds,
    }


if __name__ == "__main__":
    print(json.dumps(plain_loop(Path(sys.argv[1]), int(sys.argv[2]))))
