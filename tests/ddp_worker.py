"""torch DistributedDataParallel over 2 CPU processes (gloo, loopback):
RandomPartStack inside a DDP-wrapped Keras model, trained with a plain torch
loop as in the Keras multi-GPU guide for torch. Prints, as JSON, each rank's
executions per block and a checksum of its weights. Started by
tests/test_distributed.py.

    KERAS_BACKEND=torch python tests/ddp_worker.py STORE_FILE

The ranks meet through a file store rather than a TCP port: a port probed
free and then handed over can be taken by another process in between.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(rank, world_size, store_file, queue):
    import keras
    import numpy as np
    import torch
    import torch.distributed as dist

    import keras_raptr
    from tests.distributed_worker import ReplicaCountingBlock

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store_file}", rank=rank,
        world_size=world_size,
    )
    keras.utils.set_random_seed(0)  # the same initial weights on each rank
    blocks = [ReplicaCountingBlock(name=f"b{i}") for i in range(6)]
    inputs = keras.Input((4,))
    stack = keras_raptr.RandomPartStack(blocks, keep_count=4)
    model = keras.Model(inputs, keras.layers.Dense(1)(stack(inputs)))
    # No find_unused_parameters: skipped blocks get zero gradients, so every
    # parameter takes part in every all-reduce.
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    rng = np.random.default_rng(rank)  # each rank its own shard of data
    losses = []
    for _ in range(10):
        x = torch.tensor(rng.normal(size=(8, 4)), dtype=torch.float32)
        y = torch.tensor(rng.normal(size=(8, 1)), dtype=torch.float32)
        loss = torch.nn.functional.mse_loss(ddp(x, training=True), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    counts = [int(keras.ops.convert_to_numpy(b.count)) for b in blocks]
    checksum = float(sum(float(torch.sum(p.detach())) for p in ddp.parameters()
                         if p.requires_grad))
    queue.put((rank, counts, checksum, losses[-2:]))
    dist.destroy_process_group()
    # End without freeing `ddp`: in torch 2.13 its gloo process group can
    # deadlock when freed (the destructor joins a worker thread, holding the
    # GIL, while that thread waits for the GIL to free a finished all-reduce).
    # That hung 6 of 16 runs of this worker with a plain Keras model too.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main():
    import torch.multiprocessing as mp

    store_file = sys.argv[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = [context.Process(target=run, args=(rank, 2, store_file, queue))
                 for rank in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    results = sorted(queue.get() for _ in range(2)) if all(
        p.exitcode == 0 for p in processes) else []
    exitcodes = [p.exitcode for p in processes]
    print("RESULT " + json.dumps({"ranks": results, "exitcodes": exitcodes}),
          flush=True)


if __name__ == "__main__":
    main()
