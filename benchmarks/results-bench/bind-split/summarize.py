import json, glob, statistics
rows = []
for f in sorted(glob.glob('benchmarks/results-bench/bind-split/*.json')):
    try:
        d = json.load(open(f))
    except Exception:
        continue
    dflt = d['schedulers']['default-scheduler'][0]; ful = d['schedulers']['fulcrum-scheduler'][0]
    c = ful['cpu_ms_per_pod']; cd = dflt['cpu_ms_per_pod']
    rows.append((f.split('/')[-1][:-5], ful['throughput'] / dflt['throughput'], dflt['throughput'], ful['throughput'],
                 c.get('fulcrum serve', 0), c['fulcrum-scheduler'], cd['kube-scheduler'], c['kube-apiserver'], cd['kube-apiserver'],
                 c['(machine)'], cd['(machine)'], ful['nodes_used'], d['lower_bound']))
print('| run | fulcrum/default | default pods/s | fulcrum pods/s | extender ms/pod | fulcrum-scheduler ms/pod | kube-scheduler (default phase) ms/pod | apiserver ms/pod fulcrum/default | machine ms/pod fulcrum/default | nodes (lower bound) |')
print('|---|---|---|---|---|---|---|---|---|---|')
for r in rows:
    print(f'| {r[0]} | {r[1]:.2f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.2f} / {r[8]:.2f} | {r[9]:.2f} / {r[10]:.2f} | {r[11]} ({r[12]}) |')
