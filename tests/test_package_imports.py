"""The package's layers: no two parts of tfdnadet import each other, directly or around a loop."""

import ast
import os

import tfdnadet

ROOT = os.path.dirname(tfdnadet.__file__)


def part_of(module: str) -> str:
    """tfdnadet.evaluation.report -> evaluation; tfdnadet.inference -> inference."""
    return module.split(".")[1]


def import_graph() -> dict:
    """{part: {parts it imports}} over every module of tfdnadet, imports inside functions included."""
    graph = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = "tfdnadet." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            if module == "tfdnadet.__init__" or module == "tfdnadet":
                continue
            part = part_of(module)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names if node.module == "tfdnadet"]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                for imported in names:
                    if imported.startswith("tfdnadet.") and part_of(imported) != part:
                        graph.setdefault(part, set()).add(part_of(imported))
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected groups of more than one part (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = set()
            while not group or member != node:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycles_are_found_in_a_made_up_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_no_two_parts_of_the_package_import_each_other():
    graph = import_graph()
    assert {"evaluation", "explain", "models", "training", "serving", "data"} <= set(graph)
    assert "plots" in graph["explain"] and "explain" in graph["evaluation"]  # both draw with the shared plots module
    assert cycles(graph) == []
