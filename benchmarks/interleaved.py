"""Encoder throughput ratio to the reference, measured in one process.

`encoder.py` runs the reference and ours in separate processes, one after
the other; on a shared machine the speed drifts between the two. Here both
encoders (the reference PyTorch one and ours on `KERAS_BACKEND`, float32)
live in one process and take turns, pass by pass, so that drift hits them
alike; the ratio of the medians is the figure to trust. The cost: the two
libraries' thread pools coexist (they never run at the same time).

Run: `KERAS_BACKEND=jax python benchmarks/interleaved.py`.
"""

import argparse

import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4096)
    args = harness.add_standard_args(parser).parse_args()
    args.repeats = max(args.repeats, 3)

    import keras
    import torch

    import geovario_keras as gv
    from geovario_keras.testing import reference_geoclip as geoclip_ref

    gallery = gv.pretrained.load_geoclip_gallery(args.wheel)[: args.points]
    device = harness.torch_device()
    ref = geoclip_ref.reference_location_encoder(args.wheel).to(device)
    x = torch.from_numpy(gallery).to(device)
    model = gv.pretrained.geoclip_model(args.wheel, gallery=False, queue_size=0)

    def reference():
        with torch.no_grad():
            out = [
                ref(x[i : i + args.batch]) for i in range(0, len(x), args.batch)
            ]
        return harness.torch_sync(out)

    def ours():
        return model.encode_location(gallery, batch_size=args.batch)

    median, _ = harness.taking_turns(
        {"reference": reference, "ours": ours}, args.repeats
    )
    ref_s, ours_s = median["reference"], median["ours"]
    harness.emit(
        {
            "benchmark": "interleaved",
            "backend": keras.backend.backend(),
            "points": len(gallery),
            "repeats": args.repeats,
            "reference_points_per_s": len(gallery) / ref_s,
            "points_per_s": len(gallery) / ours_s,
            "ratio": ref_s / ours_s,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
