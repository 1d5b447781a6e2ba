"""Named by lmms-eval's plugin convention: with ``LMMS_EVAL_PLUGINS=mmke_eval`` it looks this
package up and adds its folder to the task path (too late to index it, in 0.7.3). Our task YAMLs
live in the ``mmke_tasks`` package (their hooks are ``!function mmke_tasks.hooks...``);
mmke_eval/lmms/patches.py indexes that folder instead. This package only has to exist, or the
lookup fails."""
