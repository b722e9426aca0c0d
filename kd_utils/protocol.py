"""The study's protocol, as data: its teacher, lengths, seeds, candidates, label budgets and sweeps. Plain
constants with no imports of the trainer, so that the report reads them without loading it; ``study.py``
builds the jobs from them and runs them."""

from pathlib import Path

# the stored study's teacher: trained at "auto" (bf16 on the EPYC that trained it), whatever the students' precision
STUDY_TEACHER = {"teacher_epochs": 40, "teacher_random_erasing": 0.5, "teacher_precision": "auto"}
# Every run of the stored study (sweeps included) trains in fp32 wherever it trains, so that a comparison resumed in
# a later session on a CPU with or without native bf16 stays on one machine class (the precision names the runs'
# folders); `study run` and `make study` set it.
STUDY_PRECISION = "fp32"
STUDY_EPOCHS = 15  # every compared student run (notebooks 00-03, 05)
FINAL_EPOCHS = 70  # the long run of the best candidate, next to a baseline as long (notebook 04)
STUDY_SEEDS = (1, 2, 3, 4, 5)  # training seeds of every compared run; the sweeps tune on seed 0, which is not one
CANDIDATES = ("logit", "hidden", "regressor")  # notebooks 01-03 at the defaults; 04 trains the best again, longer
# the few-label runs' candidates: teacher terms on every image's logits, labeled or not (DKD is none: it splits the
# labeled class off, so it leaves the teacher out on every image without a label)
LOGIT_METHODS = ("logit", "dist", "logit+ls", "dist+ls")
FEW_LABEL_FRACTIONS = (0.1, 0.01)  # notebook 05's few-label runs: the fraction of training labels kept
SEMI_SUPERVISED = "-semi"  # name suffix of few-label runs distilled from a teacher trained on those labels alone
# the order the study's sweeps run in: the logit-based methods and their standardized variants first (the few-label
# runs need them; 04's final run waits for the logit, hidden and regressor sweeps, 01-03's candidates), then the
# feature terms; a study cut short has its most-read sweeps done
SWEEP_ORDER = ("logit", "dist", "dkd", "logit+ls", "dist+ls", "dkd+ls", "logit+regressor", "fitnets", "hidden",
               "regressor", "at", "rkd", "logit+hidden")  # fmt: skip
# methods whose 15-epoch runs are a job of their own over every seed (``05-<method>``), so that the seed jobs
# (05-seed-S: every other method) need not wait for their sweep: the regressor's sweep began on the AVX512 EPYC
# (7 of its 16 trials by 2026-12-06) and can go on only on that machine class, while sessions on the Xeon since
# then could train the rest of the comparison (the comparison's runs fix their own class, whatever the sweeps')
DEFERRED_METHODS = ("regressor",)
SWEEP_DATASET = "fashion-mnist"  # the stored study's data set
SWEEP_SEED = 0  # the sweeps' training seed
# per method: 16 trials at the study's length (complete or pruned), the default setting first, TPE after a random
# third, trials below the median of earlier ones at an epoch stopped there, once 5 trials are complete and after the
# first third of the epochs (``sweep.make_pruner``; the stored study's were 6 random trials
# of 5 epochs). A worker may start up to 48, so that trials that diverge (failed: not counted) are made up for
# before it scores the choice; the cap of 16 ends it.
SWEEP_SETTINGS = {"epochs": STUDY_EPOCHS, "max_trials": 16, "trials": 48, "pruner": "median"}
SWEEP_VERSION = "v2"  # in the study names: the stored study's sweeps (v1) are never resumed or read as these
SWEEPS_DIR = Path("results") / SWEEP_DATASET / "sweeps"  # trials, tuned records and figures (README links)
SWEEP_STORAGE = "journal:///checkpoints/sweeps-v2.journal"  # resumable across sessions (a small file to commit)
