"""A small line plot for the fine-tune dock (training loss, validation IoU), drawn with QPainter.

The x axis is shared (``x_label``, e.g. training step); the first series is scaled on the left axis, the others
on the right one (each with its own range: ``fixed`` ranges, else 0..max), with tick values and axis titles.
"""

from __future__ import annotations

from bisect import insort

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

COLORS = ("#f0a030", "#40c0f0", "#90e070", "#e060c0")
TEXT, GRID, FRAME = QColor("#c8c8d0"), QColor("#3a3a44"), QColor("#66666f")
#: Room around the plot for tick labels and axis titles (pixels): left, top, right, bottom.
MARGINS = (40, 20, 40, 30)


class CurveWidget(QWidget):
    """Named series of (x, y) points on a shared x axis; the legend shows each series' last value."""

    def __init__(self, fixed: dict[str, tuple[float, float]] | None = None, x_label: str = "training step",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.fixed = dict(fixed or {})
        self.x_label = x_label
        self.setMinimumHeight(170)
        self.setMinimumWidth(220)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training loss (left axis) and the hold-out slice's IoU (right axis, 0 to 1) against "
                        "training steps; IoU is measured after each epoch")

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

    def axes(self) -> list[tuple[str, str]]:
        """(series, side) of the axes drawn: the first series on the left, the second on the right."""
        return list(zip(self.series, ("left", "right"), strict=False))

    def paintEvent(self, event) -> None:  # Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(painter.font())
        font.setPointSizeF(max(font.pointSizeF() - 1, 7.5))
        painter.setFont(font)
        painter.fillRect(self.rect(), QColor("#1e1e24"))
        left, top, right, bottom = MARGINS
        plot = QRectF(self.rect()).adjusted(left, top, -right, -bottom)
        x_max = max((x for points in self.series.values() for x, _ in points), default=1.0) or 1.0
        self._frame(painter, plot, x_max)
        colors = {name: QColor(COLORS[i % len(COLORS)]) for i, name in enumerate(self.series)}
        for name, side in self.axes():
            self._axis(painter, plot, name, side, colors[name])
        for name, points in self.series.items():
            self._line(painter, plot, points, self.y_range(name), x_max, colors[name])
        self._legend(painter, colors)
        if not self.series:
            painter.setPen(TEXT)
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "loss and validation IoU appear here")
        painter.end()

    def _frame(self, painter: QPainter, plot: QRectF, x_max: float) -> None:
        """The plot's frame, horizontal grid lines, x ticks (0, half, max) and the x axis title."""
        painter.setPen(QPen(GRID, 1))
        for f in (0.25, 0.5, 0.75):
            y = plot.bottom() - plot.height() * f
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        painter.setPen(QPen(FRAME, 1))
        painter.drawRect(plot)
        painter.setPen(TEXT)
        metrics = painter.fontMetrics()
        for f in (0.0, 0.5, 1.0):
            text = _tick(x_max * f)
            x = plot.left() + plot.width() * f - metrics.horizontalAdvance(text) / 2
            painter.drawText(QPointF(x, plot.bottom() + metrics.ascent() + 2), text)
        title = self.x_label
        painter.drawText(QPointF(plot.center().x() - metrics.horizontalAdvance(title) / 2,
                                 self.height() - metrics.descent() - 1), title)

    def _axis(self, painter: QPainter, plot: QRectF, name: str, side: str, color: QColor) -> None:
        """Tick values (bottom, middle, top of the range) and the series' name along one side, in its colour."""
        lo, hi = self.y_range(name)
        metrics = painter.fontMetrics()
        painter.setPen(color)
        for f in (0.0, 0.5, 1.0):
            text = _tick(lo + (hi - lo) * f)
            y = plot.bottom() - plot.height() * f + metrics.ascent() / 2 - 1
            x = plot.left() - metrics.horizontalAdvance(text) - 4 if side == "left" else plot.right() + 4
            painter.drawText(QPointF(x, y), text)
        painter.save()
        painter.translate(QPointF(metrics.ascent() - 1 if side == "left" else self.width() - metrics.descent() - 1,
                                  plot.center().y()))
        painter.rotate(-90 if side == "left" else 90)
        painter.drawText(QPointF(-metrics.horizontalAdvance(name) / 2, 0), name)
        painter.restore()

    def _line(self, painter: QPainter, plot: QRectF, points: list[tuple[float, float]], y_range: tuple[float, float],
              x_max: float, color: QColor) -> None:
        lo, hi = y_range
        span = (hi - lo) or 1.0
        line = QPolygonF([QPointF(plot.left() + plot.width() * x / x_max,
                                  plot.bottom() - plot.height() * min(max((y - lo) / span, 0.0), 1.0))
                          for x, y in points])
        painter.setPen(QPen(color, 1.8))
        if len(points) == 1:
            painter.drawEllipse(line[0], 2.5, 2.5)
        elif points:
            painter.drawPolyline(line)

    def _legend(self, painter: QPainter, colors: dict[str, QColor]) -> None:
        x = float(MARGINS[0])
        for name, points in self.series.items():
            text = f"{name} {points[-1][1]:.3f}" if points else name
            painter.setPen(colors[name])
            painter.drawText(QPointF(x, 14), text)
            x += painter.fontMetrics().horizontalAdvance(text) + 14


def _tick(value: float) -> str:
    """A short tick label: integers as such, small values with up to 2 decimals."""
    if abs(value - round(value)) < 1e-9 and abs(value) >= 1:
        return f"{round(value):d}"
    return f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.0f}"
