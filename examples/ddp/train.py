"""Elastic PyTorch DDP training with checkpoints, on CPU (gloo) or GPU (NCCL).

Launched under torchrun by every mlcloud provider. Resumes from the newest checkpoint, so a
killed worker, a spot interruption or a scale event costs at most ``checkpoint_every`` steps.
"""

import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mlcloud import runtime


class Net(nn.Module):
    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def main() -> None:
    params = runtime.hparams()
    steps = int(params.get("steps", 300))
    every = int(params.get("checkpoint_every", 20))
    delay = float(params.get("step_delay", 0.0))
    rank, world = runtime.init_distributed()
    device = torch.device(f"cuda:{runtime.local_rank()}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = Net(int(params.get("width", 256))).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(params.get("lr", 0.05)))
    start = 0
    resumed = runtime.load_checkpoint()
    if resumed is not None:
        state, start = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"[rank {rank}] resumed from step {start}", flush=True)
    ddp = DistributedDataParallel(model) if world > 1 else model
    generator = torch.Generator().manual_seed(1000 + rank)
    batch = int(params.get("batch_size", 64))
    t0 = time.perf_counter()
    for step in range(start + 1, steps + 1):
        x = torch.randn(batch, 32, generator=generator).to(device)
        y = (x[:, 0] > 0).long()
        loss = nn.functional.cross_entropy(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            runtime.save_checkpoint(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, step
            )
            print(f"[rank {rank}] step {step} loss {loss.item():.4f}", flush=True)
        if delay:
            time.sleep(delay)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    print(f"[rank {rank}] steps/s: {(steps - start) / elapsed:.2f}", flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()
    if runtime.is_chief():
        # the drift baseline: a sample of the training inputs (x ~ N(0, 1), 32 features)
        reference = torch.randn(2048, 32, generator=torch.Generator().manual_seed(0))
        runtime.save_model(
            torch.jit.script(model.cpu()),
            framework="pytorch",
            reference=reference.numpy(),
            reference_target=(reference[:, 0] > 0).long().numpy(),
        )
        print(f"model saved to {runtime.model_dir()}", flush=True)


if __name__ == "__main__":
    main()
