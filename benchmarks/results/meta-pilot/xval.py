"""Offline cross-validation of the descent objective on per-batch gradient statistics collected at the
base weights (collect_stats.py): fit a ScalePolicy on half the batches of every task, score the other half.
Run from the repository root: python benchmarks/results/meta-pilot/xval.py STATS.json SHARING BETA BOUND FOLDS"""
import json, torch, sys, math, itertools
sys.path.insert(0, ".")
from meta.descent import StatsMean, GradStats, DescentModel, scales_squared, allocation_kl
from meta.policy import ScalePolicy
from meta.report import sharing_groups
d=json.load(open(sys.argv[1]))
n=torch.tensor(d["counts"],dtype=torch.float64); names=d["names"]
def gs(r):
    G1,G2,X=[torch.tensor(r[k],dtype=torch.float64) for k in ("G1","G2","X")]
    return GradStats(X, 0.5*(r["m1"]*(G1-X)+r["m2"]*(G2-X)), r["loss"], r["m1"]+r["m2"])
rows=d["rows"]; tasks=sorted(set(r["task"] for r in rows))
K=max(r["k"] for r in rows)+1
def groups(mode):
    return sharing_groups(names, mode)
def fit(train, mode, beta, bound, iters=300, lr=0.05):
    pol=ScalePolicy([(nm,[1],False) for nm in names], bound=bound, groups=groups(mode), sharing=mode)
    opt=torch.optim.Adam(pol.parameters(), lr=lr); model=DescentModel()
    for it in range(iters):
        s2=scales_squared(pol(), n); J=model.objective(s2, train, n)-beta*allocation_kl(s2,n)
        opt.zero_grad(); (-J).backward(); torch.nn.utils.clip_grad_norm_(pol.parameters(),1.0); opt.step()
    return pol
def mean_stats(sel):
    out=[]
    for t in tasks:
        st=StatsMean(len(n))
        for r in rows:
            if r["task"]==t and r["k"] in sel: st.add(gs(r))
        out.append(st)
    return out
mode=sys.argv[2]; beta=float(sys.argv[3]); bound=float(sys.argv[4])
folds=int(sys.argv[5]) if len(sys.argv)>5 else 2
ks=list(range(K)); res=[]
model=DescentModel()
for f in range(folds):
    va=[k for k in ks if k%folds==f]; tr=[k for k in ks if k%folds!=f]
    pol=fit(mean_stats(tr), mode, beta, bound)
    with torch.no_grad():
        s2=scales_squared(pol(), n)
        ttr=model.terms(s2, mean_stats(tr), n); tva=model.terms(s2, mean_stats(va), n)
    print(f"fold {f}: train robust", [round(float(x),3) for x in ttr["robust"]], "val robust", [round(float(x),3) for x in tva["robust"]], "val r*", [round(float(x),3) for x in tva["r_star"]],
          "val a", [round(float(x),3) for x in tva["a"]], "val q", [round(float(x),3) for x in tva["q"]], "val r@lr", [round(float(x),3) for x in tva["r_lr"]], "valid", tva["valid"].tolist(), "max s", round(float(s2.sqrt().max()),2), "min s", round(float(s2.sqrt().min()),3))
print(tasks)
