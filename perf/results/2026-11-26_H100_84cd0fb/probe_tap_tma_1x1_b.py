# The second probe of the same session (see probe_tap_tma_1x1.py): which sizes go wrong, and
# which output channels ("bad k": max |error| > 0.05 anywhere in that channel).
import torch, torch.nn.functional as F
from tritonconv import functional
from tritonconv.kernels import router
from tritonconv import tuning
torch.manual_seed(0)
for (N,C,H,K,R,pad) in [(32,256,14,1024,3,1),(8,256,14,1024,1,0),(16,256,14,1024,1,0),(64,256,14,1024,1,0),(32,256,14,512,1,0),(32,128,14,1024,1,0),(32,256,16,1024,1,0),(32,256,28,1024,1,0),(32,64,14,1024,1,0)]:
    x=torch.randn(N,C,H,H,device='cuda').half().contiguous(memory_format=torch.channels_last)
    w=(torch.randn(K,C,R,R,device='cuda')/(C*R*R)**.5).half().contiguous(memory_format=torch.channels_last)
    ref=F.conv2d(x.double(),w.double(),None,1,pad)
    errs=[]
    with router.force('tap_tma'), tuning.recording_configs() as cfg:
        for i in range(2):
            torch.empty(ref.numel()*2, dtype=torch.half, device='cuda').fill_(float('nan'))
            y=functional.conv2d(x,w,None,1,pad)
            d=(y.double()-ref).abs().amax(dim=(0,2,3))
            errs.append(((y.double()-ref).norm()/ref.norm()).item())
    bad=(d>0.05).nonzero().flatten().tolist()
    print((N,C,H,K,R,pad), ["%.1e"%e for e in errs], dict(cfg), "bad k:", bad[:8], len(bad), flush=True)
