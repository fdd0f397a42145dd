"""H1B-KV diagnostic: correlation of the SimHash score estimate with the exact q·k on the shared
SmolLM2 tensors (numpy only; re-implements the projection of docs/FORMAT.md, "Sign sketch").
Usage: python3 tools/h1b_score_corr.py [path/to/smollm2_apache_kv.safetensors]"""
import json, math, struct, sys

import numpy as np
def load(path):
    b=open(path,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); base=8+n; out={}
    for k,v in h.items():
        if k=='__metadata__': continue
        s,e=v['data_offsets']; dt={'F16':np.float16,'I32':np.int32,'F32':np.float32}[v['dtype']]
        out[k]=np.frombuffer(b[base+s:base+e],dtype=dt).reshape(v['shape'])
    return out
M=(1<<64)-1
def proj(seed,b,d):
    st=seed; rows=[]
    def nxt():
        nonlocal st
        st=(st+0x9E3779B97F4A7C15)&M; z=st
        z=((z^(z>>30))*0xBF58476D1CE4E5B9)&M; z=((z^(z>>27))*0x94D049BB133111EB)&M
        return z^(z>>31)
    while len(rows)<b*d:
        u1=((nxt()>>11)+1)*2.0**-53; u2=((nxt()>>11)+1)*2.0**-53
        r=math.sqrt(-2*math.log(u1)); th=2*math.pi*u2
        rows+=[r*math.cos(th), r*math.sin(th)]
    return np.array(rows[:b*d],dtype=np.float32).astype(np.float64).reshape(b,d)
t = load(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/smollm2_apache_kv.safetensors")
for b in (64,256):
    R=proj(0x4831424B,b,64)
    line=[]
    for L in (0,7,15,29):
        K=t[f'k_post.{L}'].astype(np.float64); Q=t[f'q_post.{L}'].astype(np.float64)
        cs=[]
        for h in range(9):
            kv=h//3; k=K[kv]; sk=(k@R.T)>=0; nk=np.linalg.norm(k,axis=1)
            for i in range(0,256,32):
                q=Q[h,i]; p=1792+i; sq=(R@q)>=0
                ham=(sk[:p+1]!=sq).sum(1); est=np.linalg.norm(q)*nk[:p+1]*np.cos(np.pi*ham/b)
                ex=k[:p+1]@q
                cs.append(np.corrcoef(est,ex)[0,1])
        line.append(f"L{L} {np.mean(cs):.3f}")
    print(f"b={b}: mean corr(estimate, q·k) over 72 queries:", ", ".join(line))
