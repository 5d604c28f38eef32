#pragma once
/// @file progress.hpp
/// What a training run prints: a redrawn progress bar on a terminal (percent, ETA, loss, tokens/s),
/// one plain line every N steps otherwise (logs, CI), nothing when quiet.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include <unistd.h>

namespace distill::train {

/// Prints training progress to a stream (see the file comment).
class Progress {
public:
    /// `stream` may be null (silent). `every` is the step interval of plain lines (0: only the last).
    Progress(std::FILE* stream, bool quiet, std::int64_t total_steps, std::int64_t every)
        : out_(quiet ? nullptr : stream), total_(total_steps), every_(every) {
        tty_ = out_ && ::isatty(::fileno(out_));
        start_ = clock::now();
    }

    /// Reports the state after update `step` (1-based). `first_step` is where this process started
    /// (a resumed run estimates its ETA from its own steps only).
    void step(std::int64_t step, std::int64_t first_step, std::int64_t epoch, double loss, double lr, double grad_norm,
              double tokens_per_s) {
        if (!out_) return;
        const double elapsed = seconds_since(start_);
        const double done = static_cast<double>(step - first_step);
        const double eta = done > 0 ? elapsed / done * static_cast<double>(total_ - step) : 0.0;
        const double pct = total_ > 0 ? 100.0 * static_cast<double>(step) / static_cast<double>(total_) : 100.0;
        char line[256];
        std::snprintf(line, sizeof line,
                      "step %lld/%lld (%3.0f%%) epoch %lld  loss %.4f  lr %.2e  grad_norm %.3g  %s tok/s  ETA %s",
                      static_cast<long long>(step), static_cast<long long>(total_), pct,
                      static_cast<long long>(epoch + 1), loss, lr, grad_norm, human(tokens_per_s).c_str(),
                      duration(eta).c_str());
        if (tty_) {
            // Redraw at most ten times a second: a terminal is slower than a tiny model's step.
            if (step != total_ && seconds_since(last_draw_) < 0.1) return;
            last_draw_ = clock::now();
            const int width = 24;
            const int filled = static_cast<int>(std::lround(pct / 100.0 * width));
            std::string bar(static_cast<std::size_t>(std::max(0, std::min(width, filled))), '=');
            bar.resize(width, ' ');
            std::fprintf(out_, "\r\033[K[%s] %s", bar.c_str(), line);
            std::fflush(out_);
            drawn_ = true;
        } else if ((every_ > 0 && step % every_ == 0) || step == total_) {
            std::fprintf(out_, "%s\n", line);
            std::fflush(out_);
        }
    }

    /// Prints a message on its own line (validation results, warnings) without breaking the bar.
    void message(const std::string& text) {
        if (!out_) return;
        if (tty_ && drawn_) std::fprintf(out_, "\r\033[K");
        std::fprintf(out_, "%s\n", text.c_str());
        std::fflush(out_);
        drawn_ = false;
        last_draw_ = {};
    }

    /// Ends the bar's line.
    void finish() {
        if (out_ && tty_ && drawn_) std::fprintf(out_, "\n");
        drawn_ = false;
    }

    /// "12.3k", "4.56M": a rate in a few characters.
    static std::string human(double v) {
        char b[32];
        if (v >= 1e6)
            std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
        else if (v >= 1e3)
            std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
        else
            std::snprintf(b, sizeof b, "%.0f", v);
        return b;
    }

    /// "1h02m", "3m05s", "12s".
    static std::string duration(double s) {
        char b[32];
        const long long t = static_cast<long long>(std::llround(std::max(0.0, s)));
        if (t >= 3600)
            std::snprintf(b, sizeof b, "%lldh%02lldm", t / 3600, t / 60 % 60);
        else if (t >= 60)
            std::snprintf(b, sizeof b, "%lldm%02llds", t / 60, t % 60);
        else
            std::snprintf(b, sizeof b, "%llds", t);
        return b;
    }

private:
    using clock = std::chrono::steady_clock;
    static double seconds_since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }

    std::FILE* out_;
    std::int64_t total_, every_;
    bool tty_ = false, drawn_ = false;
    clock::time_point start_{}, last_draw_{};
};

}  // namespace distill::train
