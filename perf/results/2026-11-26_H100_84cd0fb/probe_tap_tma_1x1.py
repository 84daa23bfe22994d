# Run on the H100 of 2026-11-26 (commit 84cd0fb, torch 2.11, Triton 3.6) as
#   PYTHONPATH=$PWD TRITONCONV_CACHE_DIR=/tmp/tc python3 probe_tap_tma_1x1.py
# with the tuning cache of perf/results/2026-11-26_H100_1e4bdcc; output in NOTES.md.
# (Since commit 5e6513e tap_tma declines these 1x1 problems, so force() no longer reaches it.)
import torch, torch.nn.functional as F
from tritonconv import functional
from tritonconv.kernels import router
from tritonconv import tuning
torch.manual_seed(0)
for (N,C,H,K,R,pad) in [(32,256,14,1024,1,0),(32,1024,14,256,1,0),(32,64,56,64,1,0),(32,256,14,256,3,1),(8,256,14,1024,1,1),(32,256,7,512,1,0),(4,128,14,128,1,0)]:
    x=torch.randn(N,C,H,H,device='cuda').half().contiguous(memory_format=torch.channels_last)
    w=(torch.randn(K,C,R,R,device='cuda')/(C*R*R)**.5).half().contiguous(memory_format=torch.channels_last)
    ref=F.conv2d(x.double(),w.double(),None,1,pad)
    errs=[]
    with router.force('tap_tma'), tuning.recording_configs() as cfg:
        for i in range(3):
            torch.empty(ref.numel()*2, dtype=torch.half, device='cuda').fill_(float('nan'))
            y=functional.conv2d(x,w,None,1,pad)
            errs.append(((y.double()-ref).norm()/ref.norm()).item())
    print((N,C,H,K,R,pad), ["%.1e"%e for e in errs], dict(cfg), flush=True)
