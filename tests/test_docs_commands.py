"""Every command the documentation shows runs as written: its script, module, console script,
make target and config files exist, and each option it passes to an mmtt tool is one the tool
accepts.

The documents are found when the tests run (README.md, docs/**/*.md, configs/*/README.md), so a
new page is covered without a change here. Shell-like fenced blocks (```bash, ```sh, ```shell,
```console and unlabelled ones) are read as commands; a block with `$ ` prompts has commands on
those lines only (the rest is output), and an unlabelled block without prompts has commands on
the lines that start with a known command (the rest is text, such as a file tree). Python blocks
are not commands, but the `mmtt::` config bases they name must exist.

Nothing is run: each tool's argparse parser is captured when its ``parse_args`` (or ``main``)
calls ``ArgumentParser.parse_args``.
"""
import argparse
import functools
import importlib
import importlib.util
import os
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Set, Tuple
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_GLOBS = ('README.md', 'docs/**/*.md', 'configs/*/README.md')
SHELL_LANGS = {'', 'bash', 'sh', 'shell', 'console', 'zsh'}
PYTHON_LANGS = {'python', 'py', 'python3'}
# First words that make a line of an unlabelled block (or of a console block without prompts) a
# command; any other line there is text.
PREFIX_WORDS = {'bash', 'sh', 'make', 'cd', 'pip', 'pip3', 'torchrun', 'env', 'git', 'srun', 'sbatch'}
WRAPPER_WORDS = {'env', 'time', 'nohup', 'exec', 'sudo'}

ENV_ASSIGN = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=')
PYTHON_WORD = re.compile(r'^(?:\S*/)?python(?:\d+(?:\.\d+)*)?$|^"?\$\{?PY(?:THON)?\}?"?$')
PLACEHOLDER = re.compile(r'^[A-Z][A-Z0-9_]*$')
FLAG = re.compile(r'^(--?[A-Za-z][\w-]*)(?:=(.*))?$')
# Paths into this repository, wherever they appear on a command line or in its comment; a path
# preceded by a word or a slash (mmsegmentation/tools/test.py, my_project/configs/x.py) is not one.
REPO_PATH = re.compile(r'(?<![\w./-])(?:\./)?((?:configs|tools|benchmarks)/[\w./-]*?\.(?:py|sh))(?![\w/-])')
SCRIPT_WORD = re.compile(r'^(?:\./)?(?:tools|benchmarks)/[\w./-]+\.(?:sh|py)$')
MODULE_PATH = re.compile(r'(?<![\w.])(mmtt(?:\.\w+)+)')
CONSOLE_SCRIPT = re.compile(r'(?<![\w./-])(mmtt-[a-z][a-z0-9-]*)(?![\w.])')
MIM_BASE = re.compile(r'''['"](mmtt|mmseg|mmdet|mmpretrain)::([^'"]+)['"]''')


class Command(NamedTuple):
    line: int
    text: str      # the logical command line, continuations joined, comment removed
    comment: str   # its comments


class Problem(NamedTuple):
    line: int
    token: str
    message: str


# --------------------------------------------------------------------------------------------
# What the repository provides


@functools.lru_cache(maxsize=None)
def console_scripts() -> Dict[str, str]:
    """``setup.py``'s console scripts: name -> module."""
    text = (REPO / 'setup.py').read_text()
    return {name: module for name, module in re.findall(r"'(mmtt-[\w-]+)\s*=\s*([\w.]+):\w+'", text)}


@functools.lru_cache(maxsize=None)
def make_targets() -> Set[str]:
    path = REPO / 'Makefile'
    if not path.is_file():
        return set()
    targets = set()
    for line in path.read_text().splitlines():
        m = re.match(r'^([A-Za-z0-9_.%/-][^:=#\t]*?)\s*::?(?!=)', line)
        if m:
            targets.update(t for t in m.group(1).split() if not t.startswith('.'))
    return targets


def module_exists(name: str) -> bool:
    parts = name.split('.')
    base = REPO.joinpath(*parts)
    return base.with_suffix('.py').is_file() or (base / '__init__.py').is_file()


@functools.lru_cache(maxsize=None)
def tool_of_script(rel: str) -> Optional[str]:
    """The ``mmtt.tools`` module whose options a repository script takes: a ``tools/NAME.py``
    entry point imports its ``main``; a shell wrapper hands its trailing arguments to a
    ``tools/NAME.py`` (``"$(dirname "$0")/test.py"``)."""
    path = REPO / rel
    if not path.is_file():
        return None
    text = path.read_text()
    if rel.endswith('.py'):
        m = re.search(r'^from (mmtt\.tools\.\w+) import main\b', text, re.M)
        return m.group(1) if m else None
    m = re.search(r'\$0"?\)/(\w+)\.py', text)
    return tool_of_script(f'{Path(rel).parent}/{m.group(1)}.py') if m else None


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


@functools.lru_cache(maxsize=None)
def tool_parser(module_name: str) -> argparse.ArgumentParser:
    """The ArgumentParser a tool builds, taken when it parses (the tool never runs)."""
    module = importlib.import_module(module_name)

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    entry = getattr(module, 'parse_args', None) or getattr(module, 'main')
    with mock.patch.object(argparse.ArgumentParser, 'parse_args', capture), \
            mock.patch.object(argparse.ArgumentParser, 'parse_known_args', capture):
        try:
            entry([])
        except _Captured as captured:
            return captured.parser
    raise AssertionError(f'{module_name}: no ArgumentParser.parse_args call found')


def mim_config_root(package: str) -> Optional[Path]:
    """Where ``package::`` config bases resolve: this checkout's configs/ for mmtt, the installed
    package's .mim/configs for the others (None when it is not installed)."""
    if package == 'mmtt':
        return REPO / 'configs'
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / '.mim' / 'configs'


# --------------------------------------------------------------------------------------------
# Reading the documents


def doc_files() -> List[Path]:
    found = set()
    for pattern in DOC_GLOBS:
        found.update(p for p in REPO.glob(pattern) if p.is_file())
    return sorted(found)


def fenced_blocks(text: str) -> Iterator[Tuple[str, List[Tuple[int, str]]]]:
    """(language, [(line number, line)]) for every fenced code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r'^\s*(`{3,}|~{3,})\s*([^\s`]*)', lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower().lstrip('{.').rstrip('}')
        body = []
        i += 1
        while i < len(lines) and not re.match(r'^\s*' + re.escape(fence[0]) + '{%d,}\\s*$' % len(fence),
                                              lines[i]):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        yield lang, body


def split_comment(line: str) -> Tuple[str, str]:
    """``(code, comment)``: a ``#`` at the start of a word, outside quotes, starts a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in '\'"':
            quote = ch
        elif ch == '#' and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1:]
    return line, ''


def first_word(code: str) -> str:
    words = code.split()
    while words and (ENV_ASSIGN.match(words[0]) or words[0] in WRAPPER_WORDS):
        words = words[1:]
    return words[0] if words else ''


def looks_like_command(code: str) -> bool:
    word = first_word(code)
    return bool(word) and (word in PREFIX_WORDS or bool(PYTHON_WORD.match(word)) or word.startswith('mmtt-')
                           or bool(SCRIPT_WORD.match(word)))


def shell_commands(lang: str, body: List[Tuple[int, str]]) -> Iterator[Command]:
    prompts = any(re.match(r'^\s*\$ ', line) for _, line in body)
    pending: Optional[Command] = None
    heredoc = None
    for number, raw in body:
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        if pending is None:
            stripped = raw.strip()
            if prompts:
                if not stripped.startswith('$ '):
                    continue   # output
                stripped = stripped[2:]
            code, comment = split_comment(stripped)
            if not code.strip():
                continue
            if not prompts and lang in ('', 'console') and not looks_like_command(code):
                continue   # text, not a command
            pending = Command(number, '', '')
        else:
            code, comment = split_comment(raw.strip())
        m = re.search(r'<<-?\s*[\'"]?(\w+)', code)
        if m:
            heredoc = m.group(1)
        code = code.rstrip()
        more = code.endswith('\\')
        text = (pending.text + ' ' + code.rstrip('\\')).strip()
        pending = Command(pending.line, text, (pending.comment + ' ' + comment).strip())
        if not more:
            yield pending
            pending = None
    if pending is not None:
        yield pending


def split_chain(code: str) -> List[str]:
    """Split at ``&&``, ``||``, ``;`` and pipes, outside quotes and ``[optional ...]`` brackets.
    A ``|`` between two words without spaces (``model|backbone``) is a list of alternatives."""
    parts, cur, quote, depth, i = [], '', None, 0, 0
    while i < len(code):
        ch = code[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch == '[':
            depth += 1
        elif ch == ']':
            depth = max(0, depth - 1)
        elif depth == 0 and (code.startswith('&&', i) or code.startswith('||', i)):
            parts.append(cur)
            cur, i = '', i + 2
            continue
        elif depth == 0 and ch == ';':
            parts.append(cur)
            cur, i = '', i + 1
            continue
        elif depth == 0 and ch == '|' and ((i > 0 and code[i - 1].isspace())
                                           or (i + 1 < len(code) and code[i + 1].isspace())):
            parts.append(cur)
            cur, i = '', i + 1
            continue
        cur += ch
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def words_of(segment: str) -> List[str]:
    """The words of one command, optional-argument brackets removed (``[--resume [CKPT]]``)."""
    try:
        words = shlex.split(segment)
    except ValueError:
        words = segment.split()
    out = []
    for word in words:
        word = word.lstrip('[')
        while word.endswith(']') and word.count(']') > word.count('['):
            word = word[:-1]
        if word and word != '...':
            out.append(word)
    return out


def is_placeholder_path(path: str) -> bool:
    """``tools/NAME.py``, ``configs/*/x.py``, ``mmtt.tools.<name>``: a placeholder, not a path."""
    return any(PLACEHOLDER.match(part.split('.')[0]) for part in re.split(r'[/.]', path) if part) or \
        any(c in path for c in '*?{}<>$')


# --------------------------------------------------------------------------------------------
# Checking


def check_options(words: List[str], module: str) -> List[Tuple[str, str]]:
    """``(token, message)`` for every option in ``words`` that ``module``'s parser refuses, and
    every literal value of a choices option that is not among its choices."""
    parser = tool_parser(module)
    actions = parser._option_string_actions
    bad = []
    i = 0
    while i < len(words):
        m = FLAG.match(words[i])
        i += 1
        if not m:
            continue
        flag, inline = m.group(1), m.group(2)
        action = actions.get(flag)
        if action is None:
            bad.append((flag, f'{module} has no option {flag}'))
            continue
        nargs = action.nargs
        values: List[str] = []
        if inline is not None:
            values = [inline]
        elif nargs != 0:
            want = 1 if nargs in (None, '?') else (nargs if isinstance(nargs, int) else len(words))
            while i < len(words) and len(values) < want and not FLAG.match(words[i]):
                values.append(words[i])
                i += 1
        if not action.choices:
            continue
        for value in values:
            if PLACEHOLDER.match(value):
                continue
            for alt in value.split('|'):
                try:
                    typed = action.type(alt) if callable(action.type) else alt
                except (TypeError, ValueError):
                    typed = object()
                if typed not in action.choices:
                    bad.append((f'{flag} {alt}', f'{module}: {flag} takes one of '
                                                 f'{", ".join(map(str, action.choices))}'))
    return bad


def check_segment(segment: str) -> Tuple[List[Tuple[str, str]], bool]:
    """Problems of one simple command, and whether it changes directory (after which paths
    relative to this repository are no longer checked)."""
    words = words_of(segment)
    while words and (ENV_ASSIGN.match(words[0]) or words[0] in WRAPPER_WORDS):
        words = words[1:]
    if not words:
        return [], False
    head, rest = words[0], words[1:]
    bad: List[Tuple[str, str]] = []
    if head == 'cd':
        return [], not rest or rest[0] not in ('.', './')
    if head == 'make':
        targets = [w for w in rest if not w.startswith('-') and '=' not in w]
        bad += [(t, f'Makefile has no target {t}') for t in targets if t not in make_targets()]
        return bad, False
    if head in console_scripts():
        return check_options(rest, console_scripts()[head]), False
    if head.startswith('mmtt-'):
        return [(head, "setup.py's entry_points declare no console script " + head)], False
    script = None
    if PYTHON_WORD.match(head):
        j = 0
        while j < len(rest) and rest[j].startswith('-') and rest[j] not in ('-m', '-c'):
            j += 2 if rest[j] in ('-W', '-X') else 1
        if j < len(rest) and rest[j] == '-m':
            if j + 1 >= len(rest):
                return [], False
            module, args = rest[j + 1], rest[j + 2:]
            if module.split('.')[0] == 'mmtt' and not is_placeholder_path(module):
                if not module_exists(module):
                    return [(module, f'no module {module} in this repository')], False
                if module.startswith('mmtt.tools.'):
                    bad += check_options(args, module)
            return bad, False
        if j < len(rest) and rest[j] != '-c':
            script, args = rest[j], rest[j + 1:]
    elif head in ('bash', 'sh') and rest:
        script, args = rest[0], rest[1:]
    elif SCRIPT_WORD.match(head):
        script, args = head, rest
        rel = head[2:] if head.startswith('./') else head
        path = REPO / rel
        if path.is_file() and not os.access(path, os.X_OK):
            bad.append((head, f'{rel} is run directly but is not executable'))
    if script is None:
        return bad, False
    rel = script[2:] if script.startswith('./') else script
    if not rel.startswith(('tools/', 'benchmarks/')) or is_placeholder_path(rel):
        return bad, False   # another project's script, or a placeholder
    if not (REPO / rel).is_file():
        return bad + [(script, f'no file {rel}')], False
    module = tool_of_script(rel)
    if module is not None:
        bad += check_options(args, module)
    return bad, False


def check_paths(text: str) -> List[Tuple[str, str]]:
    """Repository paths, mmtt modules and console scripts named anywhere on a line exist."""
    bad = []
    for m in REPO_PATH.finditer(text):
        rel = m.group(1)
        if not is_placeholder_path(rel) and not (REPO / rel).is_file():
            bad.append((rel, f'no file {rel}'))
    for m in MODULE_PATH.finditer(text):
        name = m.group(1)
        if name.startswith('mmtt.tools.') and not is_placeholder_path(name) and not module_exists(name):
            bad.append((name, f'no module {name} in this repository'))
    for m in CONSOLE_SCRIPT.finditer(text):
        if m.group(1) not in console_scripts():
            bad.append((m.group(1), "setup.py's entry_points declare no console script " + m.group(1)))
    return bad


def check_python_block(body: List[Tuple[int, str]]) -> List[Problem]:
    problems = []
    for number, line in body:
        for m in MIM_BASE.finditer(line):
            package, rel = m.groups()
            root = mim_config_root(package)
            if root is not None and not (root / rel).is_file():
                where = 'configs/' if package == 'mmtt' else f"{package}'s .mim/configs/"
                problems.append(Problem(number, f'{package}::{rel}', f'no config {rel} under {where}'))
        _, comment = split_comment(line)
        for token, message in check_paths(comment):
            if token.startswith('configs/'):
                problems.append(Problem(number, token, message))
    return problems


def check_markdown(text: str) -> Tuple[List[Problem], int]:
    """The problems of a markdown text, and how many commands it holds."""
    problems: List[Problem] = []
    count = 0
    for lang, body in fenced_blocks(text):
        if lang in PYTHON_LANGS:
            problems += check_python_block(body)
            continue
        if lang not in SHELL_LANGS:
            continue
        moved = False   # after a `cd`, relative paths are another tree's
        for command in shell_commands(lang, body):
            count += 1
            found = []
            if not moved:
                found += check_paths(command.text + ' # ' + command.comment)
                for segment in split_chain(command.text):
                    seg_bad, cd = check_segment(segment)
                    found += seg_bad
                    if cd:
                        moved = True
                        break
            seen = set()
            for token, message in found:
                if (token, message) not in seen:
                    seen.add((token, message))
                    problems.append(Problem(command.line, token, message))
    return problems, count


def report(path: Path, problems: List[Problem]) -> str:
    rel = path.relative_to(REPO) if path.is_absolute() else path
    return '\n'.join(f'{rel}:{p.line}: {p.token!r}: {p.message}' for p in problems)


# --------------------------------------------------------------------------------------------
# Tests


def test_docs_are_found():
    files = [str(p.relative_to(REPO)) for p in doc_files()]
    assert 'README.md' in files, files


@pytest.mark.parametrize('rel', [str(p.relative_to(REPO)) for p in doc_files()])
def test_every_documented_command_resolves(rel):
    path = REPO / rel
    problems, _ = check_markdown(path.read_text())
    assert not problems, '\n' + report(path, problems)


def test_the_docs_hold_commands_to_check():
    assert sum(check_markdown(p.read_text())[1] for p in doc_files()) > 0


CHECKER_SAMPLE = '''\
# Sample

```bash
python tools/test.py configs/segmenter_tt_ade20k.py CHECKPOINT [--work-dir DIR] [--out DIR] \\
    [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi] [--tta]   # configs/segmenter/segmenter_tt_ade20k.py
PORT=29501 bash tools/dist_test.sh configs/segmenter/segmenter_tt_ade20k.py CHECKPOINT 2 --out DIR
python -m mmtt.tools.get_flops CONFIG --shape 64 64 --part model|backbone | tee flops.txt && make test
mmtt-test CONFIG CHECKPOINT --non-strict   # same as python -m mmtt.tools.test
python mmsegmentation/tools/test.py my_project/configs/x.py CHECKPOINT --any-option
python tools/test.py configs/no_such_config.py CHECKPOINT
python tools/no_such_tool.py --x
python tools/test.py CONFIG CHECKPOINT \\
    --no-such-flag
tools/dist_test.sh CONFIG CHECKPOINT 2 --bogus
python -m mmtt.tools.get_flops CONFIG --part model|everything
python -m mmtt.tools.no_such_module
mmtt-no-such-script CONFIG
make no-such-target
```

```
$ python -m mmtt.tools.benchmark --help
$ python -m mmtt.tools.<name> --help   # or mmtt.tools.NAME
python tools/this_is_output_not_a_command.py
$ bash tools/dist_train.sh CONFIG 2 --amp --not-an-option
```

```
mmtt/tools/     tools/NAME.py and tools/measure/ are text in a file tree here
tools/          entry points (tools/missing.py)
```

```python
_base_ = ['mmtt::segmenter_tt_ade20k.py']
_base_ = ['mmtt::segmenter/no_such.py']
```

```text
python tools/not_checked_in_a_text_block.py
```
'''


def test_checker_finds_each_bad_command_and_passes_the_good_ones():
    problems, count = check_markdown(CHECKER_SAMPLE)
    found = sorted((p.line, p.token) for p in problems)
    assert found == sorted([
        (10, 'configs/no_such_config.py'),
        (11, 'tools/no_such_tool.py'),
        (12, '--no-such-flag'),
        (14, '--bogus'),
        (15, '--part everything'),
        (16, 'mmtt.tools.no_such_module'),
        (17, 'mmtt-no-such-script'),
        (18, 'no-such-target'),
        (25, '--not-an-option'),
        (35, 'mmtt::segmenter/no_such.py'),
    ]), '\n' + report(Path('SAMPLE.md'), problems)
    assert count == 16
    messages = {p.token: p.message for p in problems}
    assert messages['--no-such-flag'] == 'mmtt.tools.test has no option --no-such-flag'
    assert messages['--bogus'] == 'mmtt.tools.test has no option --bogus'
    assert messages['--not-an-option'] == 'mmtt.tools.train has no option --not-an-option'
    assert 'one of model, backbone' in messages['--part everything']


def test_checker_reads_chains_brackets_and_continuations():
    assert split_chain('A=1 python x.py --part a|b [--x y|z] | tee log && make test; echo ok') == [
        'A=1 python x.py --part a|b [--x y|z]', 'tee log', 'make test', 'echo ok']
    assert words_of('tools/train.py CONFIG [--resume [CKPT]] [--cfg-options k=[1,2] ...]') == [
        'tools/train.py', 'CONFIG', '--resume', 'CKPT', '--cfg-options', 'k=[1,2]']
    body = list(enumerate(['python tools/test.py A B \\', '    --tta   # a comment', 'make demo'], 1))
    assert list(shell_commands('bash', body)) == [
        Command(1, 'python tools/test.py A B --tta', 'a comment'), Command(3, 'make demo', '')]
    assert tool_of_script('tools/dist_test.sh') == 'mmtt.tools.test'
    assert tool_of_script('tools/slurm_test.sh') == 'mmtt.tools.test'
    assert tool_of_script('tools/dist_train.sh') == 'mmtt.tools.train'
