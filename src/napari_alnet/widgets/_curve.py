"""A tiny line plot for the fine-tune dock (training loss, validation IoU), drawn with QPainter."""

from __future__ import annotations

from bisect import insort

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

COLORS = ("#f0a030", "#40c0f0", "#90e070", "#e060c0")


class CurveWidget(QWidget):
    """Named series of (x, y) points, each scaled to its own y range (``fixed`` ranges, else 0..max);
    all share the x axis. The legend shows each series' last value."""

    def __init__(self, fixed: dict[str, tuple[float, float]] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.fixed = dict(fixed or {})
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def add(self, name: str, x: float, y: float) -> None:
        """Add a point to series ``name`` (created on first use; kept sorted by x) and repaint."""
        insort(self.series.setdefault(name, []), (float(x), float(y)))
        self.update()

    def set(self, name: str, points: list[tuple[float, float]]) -> None:
        """Replace series ``name``."""
        self.series[name] = sorted((float(x), float(y)) for x, y in points)
        self.update()

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def y_range(self, name: str) -> tuple[float, float]:
        if name in self.fixed:
            return self.fixed[name]
        top = max((y for _, y in self.series.get(name, [])), default=1.0)
        return 0.0, top if top > 0 else 1.0

    def paintEvent(self, event) -> None:  # Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("#1e1e24"))
        plot = QRectF(self.rect()).adjusted(6, 18, -6, -6)
        painter.setPen(QPen(QColor("#55555f"), 1))
        painter.drawRect(plot)
        x_max = max((x for points in self.series.values() for x, _ in points), default=1.0) or 1.0
        legend_x = 6.0
        for i, (name, points) in enumerate(self.series.items()):
            color = QColor(COLORS[i % len(COLORS)])
            lo, hi = self.y_range(name)
            span = (hi - lo) or 1.0
            line = QPolygonF([QPointF(plot.left() + plot.width() * x / x_max,
                                      plot.bottom() - plot.height() * min(max((y - lo) / span, 0.0), 1.0))
                              for x, y in points])
            painter.setPen(QPen(color, 1.5))
            if len(points) == 1:
                painter.drawEllipse(line[0], 2.0, 2.0)
            else:
                painter.drawPolyline(line)
            text = f"{name} {points[-1][1]:.3f}" if points else name
            painter.drawText(QPointF(legend_x, 13), text)
            legend_x += painter.fontMetrics().horizontalAdvance(text) + 14
        if not self.series:
            painter.setPen(QColor("#888890"))
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "loss and validation IoU appear here")
        painter.end()
