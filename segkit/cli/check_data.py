"""Scan a dataset's label files and list every problem at once.

    python -m segkit.cli.check_data data=<name> [data.dataset.root=...] [any train.py override]

Composes ``conf/train.yaml`` with the given overrides, builds each split of ``cfg.data``
and reads every image and label file. It reports, per split, the number of images and the
pixel count of each class (and of the ignore value), and lists:

* problems (exit status 1): unreadable or truncated files, masks with extra channels,
  image/mask size mismatches, values outside the class set (with the files holding them),
  binary 0/255 masks, empty splits, duplicate samples, missing files;
* problems of the splits as a whole (:mod:`segkit.data.checks`, the same checks train.py
  runs at start-up): a training split without a labelled pixel or with a single class
  (binary 0/255 masks), the validation split equal to the training split, batches that
  would stack images of different sizes;
* hints about label conventions: Cityscapes labelIds where trainIds are expected (and
  the reverse), 1-based masks that need ``reduce_zero_label``;
* warnings: classes with no pixel in a split, images with an EXIF Orientation tag (read as
  displayed), 16-bit or transparent images, files skipped for their extension, splits that
  share images, a test split equal to the validation split, a crop many times larger than
  the images.

Datasets without per-sample label files (``data=coco``) are scanned sample by sample, as
training reads them.

It also prints the training split's class weights, every named ``loss.class_weights`` choice
(``median_frequency``, ``sqrt_median_frequency``, ``inverse_frequency``; see
:mod:`segkit.tasks.class_weights`), from the same counts that train.py uses to resolve them.

Progress goes to stderr (stdout keeps the report): a progress bar per split on a
terminal, otherwise a line at every tenth of a split and one when it is done
(:class:`ScanProgress`), so a log shows how far a long scan is.

train.py runs the cheap part at start-up and stops on a problem: a few samples per split
(``startup_check`` of the dataset), the training split's label counts (every mask, cached)
and the checks of :mod:`segkit.data.checks`; only this command decodes every image and reads
every validation and test mask.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import hydra
from hydra.errors import InstantiationException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from segkit.config import compose
from segkit.data import checks
from segkit.data.io import DataError
from segkit.data.stats import Report, SplitStats, build_split, scan_split, value_problems
from segkit.tasks.class_weights import CHOICES, weights_from_stats

CITYSCAPES_LABEL_IDS = 34  # labelIds 0..33; the 19 trainIds are a subset of them
MAX_FILES_LISTED = 5


class ScanProgress:
    """How far the scan of each split is, written to ``stream`` (stderr by default).

    On a terminal, a rich progress bar per split (files done / total, time left). Otherwise
    (a log file, a pipe, a batch job) plain lines, one every ``every`` files (default: every
    tenth of the split, rounded up) and one when the split is done::

        scanning split 'train': 298/2975 files (10%), 41.2 files/s, 65 s left
        scanned split 'train': 2975 files in 72.1 s

    Args:
        stream: where progress goes; stdout keeps the report.
        every: files between two lines (plain lines only); ``None``: a tenth of the split.
        bar: force the bar (``True``) or the lines (``False``); ``None``: the bar exactly when
            ``stream`` is a terminal.
    """

    def __init__(
        self, stream: TextIO | None = None, every: int | None = None, bar: bool | None = None
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.every = every
        self.bar = self.stream.isatty() if bar is None else bar
        self._progress: Progress | None = None
        self._name, self._total, self._done, self._step, self._start = "", 0, 0, 1, 0.0

    def start(self, name: str, total: int) -> None:
        """Begin the split ``name`` of ``total`` files."""
        self._name, self._total, self._done, self._start = name, total, 0, time.monotonic()
        self._step = self.every or max(1, math.ceil(total / 10))
        if self.bar:
            console = Console(file=self.stream, force_terminal=True)
            self._progress = Progress(
                TextColumn(f"split {name!r}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("files"),
                TimeRemainingColumn(),
                console=console,
            )
            self._progress.add_task(name, total=total)
            self._progress.start()

    def advance(self) -> None:
        """One more file of the current split is read."""
        self._done += 1
        if self._progress is not None:
            self._progress.advance(self._progress.task_ids[0])
        elif self._done % self._step == 0 and self._done < self._total:
            seconds = max(time.monotonic() - self._start, 1e-9)
            rate = self._done / seconds
            left = (self._total - self._done) / rate
            self._line(
                f"scanning split {self._name!r}: {self._done}/{self._total} files "
                f"({100 * self._done // self._total}%), {rate:.1f} files/s, {left:.0f} s left"
            )

    def finish(self) -> None:
        """The current split is done."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        else:
            seconds = time.monotonic() - self._start
            self._line(f"scanned split {self._name!r}: {self._done} files in {seconds:.1f} s")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def label_hints(stats: SplitStats, ignore_index: int) -> list[str]:
    """Guesses at a wrong label convention from the values seen in one split."""
    hints = []
    bad = sorted(stats.bad_values)
    if bad and stats.num_classes == 19 and max(bad) < CITYSCAPES_LABEL_IDS:
        hints.append(
            f"split {stats.name!r}: values {bad[:10]} lie in 19..33, as Cityscapes labelIds "
            "do: these masks look like labelIds where trainIds are expected. Use "
            "data=cityscapes (it maps labelIds itself) or convert them to trainIds."
        )
    if stats.label_ids_with_255:
        hints.append(
            f"split {stats.name!r}: {len(stats.label_ids_with_255)} *_labelIds.png files hold "
            f"255, which is no labelId (e.g. {stats.label_ids_with_255[0]}): they look like "
            "trainIds saved under the labelIds name. Rename them *_labelTrainIds.png."
        )
    if bad == [stats.num_classes] and 0 in stats.raw_values:
        hints.append(
            f"split {stats.name!r}: the only value out of range is {bad[0]} = num_classes: the "
            "masks may be 1-based with 0 = unlabelled; set data.dataset.reduce_zero_label=true."
        )
    return hints


def check_splits(
    datamodule: Any, splits: Sequence[str] | None = None, progress: ScanProgress | None = None
) -> Report:
    """Build each split of ``datamodule`` and scan every file (see the module docstring),
    reporting how far each split is to ``progress`` (none by default)."""
    report = Report()
    names = list(dict.fromkeys(splits or datamodule.splits.values()))
    # each split is named by the first key that chose it (data.train_split='train'), as the
    # start-up check names it
    subsets = {name: subset for subset, name in reversed(datamodule.splits.items())}
    datasets: dict[str, Any] = {}
    for name in names:
        subset = subsets.get(name, "val")
        key = checks.split_key(subset, name) if name in subsets else f"split {name!r}"
        stats = SplitStats(name, datamodule.num_classes)
        try:
            dataset = build_split(datamodule.dataset, name)
        except DataError as error:
            report.problems.append(f"{key}: {error}")
            continue
        datasets[name] = dataset
        report.splits[name] = stats
        if progress is not None:
            progress.start(name, len(dataset))
        try:
            scan_split(dataset, stats, datamodule.ignore_index, report, progress=progress)
        finally:
            if progress is not None:
                progress.finish()
        report.problems += [
            f"{key}: {line}" for line in value_problems(stats, datamodule.ignore_index)
        ]
        report.hints += label_hints(stats, datamodule.ignore_index)
        problems, warned = checks.split_label_findings(
            stats, subset, key, datamodule.class_names, datamodule.ignore_index, dataset
        )
        report.problems += problems
        report.warnings += warned
        skipped = [str(p) for p in getattr(dataset, "skipped_files", [])]
        if skipped:
            report.warnings.append(
                f"{key}: {len(skipped)} files skipped for their extension (not an "
                f"image or lossless mask format), e.g. {skipped[:MAX_FILES_LISTED]}"
            )
    report.problems += _split_findings(datamodule, datasets, report)
    return report


def _split_findings(datamodule: Any, datasets: dict[str, Any], report: Report) -> list[str]:
    """The split-wide start-up checks of :mod:`segkit.data.checks` (those
    ``SegmentationDataModule.check_splits`` runs) on the scanned splits."""
    problems, found = checks.split_name_problems(datamodule.splits)
    datamodule.datasets = {
        subset: datasets[name] for subset, name in datamodule.splits.items() if name in datasets
    }
    loader_problems, loader_warnings = checks.loader_findings(datamodule, list(datamodule.datasets))
    report.warnings += found + loader_warnings
    if "train" in datamodule.datasets:
        report.warnings += checks.crop_findings(datamodule)
    report.warnings += checks.test_split_findings(datamodule)
    return problems + loader_problems


def print_class_weights(stats: SplitStats, class_names: Sequence[str], console: Console) -> None:
    """Every computed weight vector of one split, per class and as YAML lists."""
    if not stats.pixels.any():
        print(f"\nno class weights: split {stats.name!r} has no labelled pixel")
        return
    vectors = {choice: weights_from_stats(choice, stats) for choice in CHOICES}
    table = Table(title=f"class weights of split {stats.name!r} (loss.class_weights=...)")
    table.add_column("class")
    for choice in CHOICES:
        table.add_column(choice, justify="right")
    for index, class_name in enumerate(class_names):
        table.add_row(class_name, *(f"{vectors[c][index]:.4f}" for c in CHOICES))
    table.caption = "weight 0: class absent from the split"
    console.print(table)
    for choice, weights in vectors.items():  # plain print: one line to paste into a config
        listed = ", ".join(f"{w:.4f}" for w in weights)
        print(f"{choice} ({stats.name!r}): [{listed}]")


def print_report(
    report: Report,
    class_names: Sequence[str],
    console: Console,
    weights_split: str | None = None,
) -> None:
    """Per-split class table, class weights of ``weights_split``, hints, warnings, problems."""
    for name, stats in report.splits.items():
        total = max(int(stats.pixels.sum()), 1)
        table = Table(title=f"split {name!r}: {stats.images} images")
        for column in ("class", "pixels", "share", "images"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for index, class_name in enumerate(class_names):
            pixels = int(stats.pixels[index])
            share = f"{pixels / total:.4f}"
            table.add_row(class_name, str(pixels), share, str(int(stats.images_with[index])))
        table.caption = f"ignored pixels: {stats.ignored}"
        console.print(table)
    if weights_split in report.splits:
        print_class_weights(report.splits[weights_split], class_names, console)
    # plain print: long file names must stay on one line for grep
    for title, lines in (
        ("hints", report.hints),
        ("warnings", report.warnings),
        ("problems", report.problems),
    ):
        if lines:
            print(f"\n{len(lines)} {title}:")
            for line in lines:
                print(f"- {line}")
    print("\nno problems found" if not report.problems else f"\n{len(report.problems)} problems")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check with Hydra overrides ``argv``; returns 1 when a problem was found."""
    cfg = compose(sys.argv[1:] if argv is None else argv)
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
    except InstantiationException as error:  # a data.* setting that cannot be right
        cause = error.__cause__
        print(f"\n1 problems:\n- {cause if isinstance(cause, ValueError) else error}")
        return 1
    datamodule.prepare_data()
    report = check_splits(datamodule, progress=ScanProgress())  # on stderr
    console = Console(width=120)
    print_report(report, datamodule.class_names, console, datamodule.splits["train"])
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
