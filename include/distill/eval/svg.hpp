#pragma once
/// @file svg.hpp
/// Self-contained SVG charts for reports: line charts (loss curves per term) and grouped bar charts
/// (teacher / baseline / student side by side). Plain SVG 1.1 text, no scripts, no external fonts.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace distill::eval {

/// One named curve of (x, y) points.
struct Series {
    std::string name;
    std::vector<double> x, y;
};

namespace detail {

inline std::string escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

inline std::string num(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

/// The start of a chart: the <svg> element of width × height on white, the title centred at the
/// top and the x axis from `left` to `right` at `bottom`.
inline std::string open_chart(const std::string& title, int width, int height, double left, double right,
                              double bottom) {
    std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) + "\" height=\"" +
                      std::to_string(height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    svg += "<text x=\"" + num(width / 2.0) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" + escape(title) +
           "</text>\n";
    svg += "<line x1=\"" + num(left) + "\" y1=\"" + num(bottom) + "\" x2=\"" + num(right) + "\" y2=\"" + num(bottom) +
           "\" stroke=\"black\"/>\n";
    return svg;
}

inline const char* color(std::size_t i) {
    static const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                    "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
    return palette[i % 8];
}

}  // namespace detail

/// A line chart of `series` (non-finite points skipped), with axes, ticks and a legend.
inline std::string line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                              const std::vector<Series>& series, int width = 720, int height = 400) {
    using namespace detail;
    double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
    for (const auto& s : series)
        for (std::size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i)
            if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
                x0 = std::min(x0, s.x[i]);
                x1 = std::max(x1, s.x[i]);
                y0 = std::min(y0, s.y[i]);
                y1 = std::max(y1, s.y[i]);
            }
    if (!(x0 <= x1)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y1 = y0 + 1;
    std::size_t longest = 0;  // the legend's column is as wide as its longest name
    for (const auto& s : series) longest = std::max(longest, s.name.size());
    const double left = 70, right = width - std::max(160.0, 50.0 + 7.0 * double(longest)), top = 40,
                 bottom = height - 50;
    auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (right - left); };
    auto py = [&](double y) { return bottom - (y - y0) / (y1 - y0) * (bottom - top); };
    std::string svg = open_chart(title, width, height, left, right, bottom);
    svg += "<line x1=\"" + num(left) + "\" y1=\"" + num(top) + "\" x2=\"" + num(left) + "\" y2=\"" + num(bottom) +
           "\" stroke=\"black\"/>\n";
    for (int k = 0; k <= 4; ++k) {
        const double xv = x0 + (x1 - x0) * k / 4, yv = y0 + (y1 - y0) * k / 4;
        svg += "<text x=\"" + num(px(xv)) + "\" y=\"" + num(bottom + 16) + "\" text-anchor=\"middle\">" + num(xv) +
               "</text>\n";
        svg += "<text x=\"" + num(left - 6) + "\" y=\"" + num(py(yv) + 4) + "\" text-anchor=\"end\">" + num(yv) +
               "</text>\n";
        svg += "<line x1=\"" + num(left) + "\" y1=\"" + num(py(yv)) + "\" x2=\"" + num(right) + "\" y2=\"" +
               num(py(yv)) + "\" stroke=\"#ddd\"/>\n";
    }
    svg += "<text x=\"" + num((left + right) / 2) + "\" y=\"" + num(height - 12.0) + "\" text-anchor=\"middle\">" +
           escape(x_label) + "</text>\n";
    svg += "<text transform=\"translate(16," + num((top + bottom) / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
           escape(y_label) + "</text>\n";
    for (std::size_t k = 0; k < series.size(); ++k) {
        const auto& s = series[k];
        std::string points;
        for (std::size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i)
            if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) points += num(px(s.x[i])) + "," + num(py(s.y[i])) + " ";
        svg += "<polyline fill=\"none\" stroke=\"" + std::string(color(k)) + "\" stroke-width=\"1.5\" points=\"" +
               points + "\"/>\n";
        const double ly = top + 16.0 * double(k);
        svg += "<line x1=\"" + num(right + 12) + "\" y1=\"" + num(ly) + "\" x2=\"" + num(right + 30) + "\" y2=\"" +
               num(ly) + "\" stroke=\"" + color(k) + "\" stroke-width=\"3\"/>\n";
        svg += "<text x=\"" + num(right + 36) + "\" y=\"" + num(ly + 4) + "\">" + escape(s.name) + "</text>\n";
    }
    return svg + "</svg>\n";
}

/// A grouped bar chart: one group per `groups` entry, one bar per `bars` name, values[bar][group].
inline std::string bar_chart(const std::string& title, const std::vector<std::string>& groups,
                             const std::vector<std::string>& bars, const std::vector<std::vector<double>>& values,
                             int width = 720, int height = 400) {
    using namespace detail;
    double vmax = 0;
    for (const auto& row : values)
        for (double v : row)
            if (std::isfinite(v)) vmax = std::max(vmax, v);
    if (vmax <= 0) vmax = 1;
    const double left = 40, right = width - 20.0, top = 40, bottom = height - 60.0;
    const double group_w = (right - left) / double(std::max<std::size_t>(1, groups.size()));
    const double bar_w = group_w * 0.8 / double(std::max<std::size_t>(1, bars.size()));
    std::string svg = open_chart(title, width, height, left, right, bottom);
    for (std::size_t g = 0; g < groups.size(); ++g) {
        const double gx = left + group_w * double(g) + group_w * 0.1;
        for (std::size_t b = 0; b < bars.size(); ++b) {
            const double v =
                b < values.size() && g < values[b].size() && std::isfinite(values[b][g]) ? values[b][g] : 0.0;
            const double h = v / vmax * (bottom - top);
            const double x = gx + bar_w * double(b);
            svg += "<rect x=\"" + num(x) + "\" y=\"" + num(bottom - h) + "\" width=\"" + num(bar_w * 0.95) +
                   "\" height=\"" + num(h) + "\" fill=\"" + color(b) + "\"><title>" + escape(bars[b]) + ": " + num(v) +
                   "</title></rect>\n";
            svg += "<text x=\"" + num(x + bar_w / 2) + "\" y=\"" + num(bottom - h - 3) +
                   "\" text-anchor=\"middle\" font-size=\"10\">" + num(v) + "</text>\n";
        }
        svg += "<text x=\"" + num(gx + group_w * 0.4) + "\" y=\"" + num(bottom + 16) + "\" text-anchor=\"middle\">" +
               escape(groups[g]) + "</text>\n";
    }
    for (std::size_t b = 0; b < bars.size(); ++b) {
        const double lx = left + 120.0 * double(b);
        svg += "<rect x=\"" + num(lx) + "\" y=\"" + num(height - 24.0) + "\" width=\"12\" height=\"12\" fill=\"" +
               color(b) + "\"/>\n";
        svg += "<text x=\"" + num(lx + 16) + "\" y=\"" + num(height - 14.0) + "\">" + escape(bars[b]) + "</text>\n";
    }
    return svg + "</svg>\n";
}

}  // namespace distill::eval
