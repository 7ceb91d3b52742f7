#!/usr/bin/env bash
# Condenses the output of the experiment scripts (scripts/<method>/*.sh) to the job lines
# ("== start: ...", "== done: ...", "== FAILED: ...") and the training progress:
#
#   bash scripts/mudpt/base2new_train.sh dtd 1 2>&1 | bash scripts/common/show_progress.sh
#
# On a terminal the latest "epoch [...]" line is rewritten in place. Anywhere else (nohup,
# Slurm, | tee, a file) carriage returns would pile every epoch of a run onto one line, so
# plain lines are printed instead: the first one, then one about every 10% of the training
# (as log.txt does for long evaluations).
set -euo pipefail

IN_PLACE=0
[ ! -t 1 ] || IN_PLACE=1

exec awk -v in_place="$IN_PLACE" '
    # The share of the training done at an "epoch [E/EPOCHS] batch [B/BATCHES]" line, 0..1.
    function done_share(line,    epoch, batch) {
        if (!match(line, /epoch \[[0-9]+\/[0-9]+\]/)) return 0
        split(substr(line, RSTART + 7, RLENGTH - 8), epoch, "/")  # 7: "epoch [", 8: and "]"
        if (epoch[2] + 0 == 0) return 0
        if (!match(line, /batch \[[0-9]+\/[0-9]+\]/)) return epoch[1] / epoch[2]
        split(substr(line, RSTART + 7, RLENGTH - 8), batch, "/")
        if (batch[2] + 0 == 0) return epoch[1] / epoch[2]
        return ((epoch[1] - 1) * batch[2] + batch[1]) / (epoch[2] * batch[2])
    }
    BEGIN { open = 0; shown_tenth = -1 }
    /^== / {
        if (open) printf "\n"
        open = 0
        shown_tenth = -1  # a new job: its progress starts again
        print
        fflush()
        next
    }
    /^epoch \[/ {
        if (in_place) {
            printf "\r   %s", substr($0, 1, 120)  # one terminal row: a wrapped line is not overwritten
            open = 1
        } else {
            tenth = int(done_share($0) * 10 + 1e-9)
            if (tenth <= shown_tenth) next
            shown_tenth = tenth
            print "   " $0
        }
        fflush()
        next
    }
    END { if (open) printf "\n" }
'
