# The CPU study of issue 16 (docs/ablations.md, "Studies"; what it found: results/README.md), applied after
# config/cpu_ablation.py (its model, batch, schedule and validation set): baseline, RoPE and all five
# switches at 3 sizes, the learning rate tuned per arm on a tuning set, on the built-in demo corpus, two
# single-threaded runs at a time:
#   python ablate.py --experiments baseline,rope,all --tune learning_rate=1e-3,3e-3,1e-2 \
#       --scale n_layer=1,1,2 --scale n_embd=16,32,64 --tokens 128k,256k,512k --seeds 4 --jobs 2 \
#       --out out/cpu_study config/cpu_ablation.py config/cpu_study.py
# (add --dry-run first: it prints the runs and the time estimate from speed probes). --scale sets the sizes
# and --tokens each size's budget; the learning rate of config/cpu_ablation.py is only the default that
# --tune replaces.
tune_docs = 20         # the 20 documents before the validation set: the tuning set (held out in both stages)
