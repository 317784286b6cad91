import time, json, sys, torch
torch.set_num_threads(1)
from zoplatform.models import load_model
from zoplatform.objectives import make_scorer
from zoplatform.params import model_blocks
from zoplatform.data import sample_splits, resolve_data_dir
from zoplatform.policy import embedding_block_names, effective_counts
t0=time.time()
model, tok = load_model("smollm2-135m", dtype="float32", protocol="prompt", seed=0); model.eval()
scorer = make_scorer(model, tok, protocol="prompt", max_length=2048)
blocks = model_blocks(model); params=[b.param for b in blocks]
emb = embedding_block_names(model)
counts = effective_counts([tuple(b.param.shape) for b in blocks], [b.name in emb for b in blocks], 240)
dd = resolve_data_dir(None); bs=int(sys.argv[2]); nb=int(sys.argv[3])
out={"names":[b.name for b in blocks],"numel":[b.numel for b in blocks],"counts":counts,"batch":bs,"rows":[]}
tasks=sys.argv[1].split(",")
trs={t: sample_splits(t, data_dir=dd, num_train=bs*nb, num_dev=0, num_test=0, seed=1).train for t in tasks}
for k in range(nb):
    for t in tasks:
        batch=trs[t][bs*k:bs*k+bs]; h=bs//2
        gs=[]; ls=[]
        for half in (batch[:h], batch[h:]):
            l=scorer.loss(half); g=torch.autograd.grad(l, params); gs.append(g); ls.append(float(l))
        G1=[float(a.double().pow(2).sum()) for a in gs[0]]; G2=[float(a.double().pow(2).sum()) for a in gs[1]]
        X=[float((a.double()*b.double()).sum()) for a,b in zip(*gs)]
        out["rows"].append({"task":t,"k":k,"G1":G1,"G2":G2,"X":X,"m1":h,"m2":len(batch)-h,"loss":sum(ls)/2})
        del gs
        print(t,k,round(time.time()-t0), flush=True)
        json.dump(out, open(sys.argv[4],"w"))
