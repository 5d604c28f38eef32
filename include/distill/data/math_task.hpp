#pragma once
/// @file math_task.hpp
/// The built-in math reasoning task of the quickstart: arithmetic word problems generated from a
/// seed, each with an exact answer and a one-line worked solution ("7+5=12. The answer is 12.").
/// Small enough for byte-level models trained in minutes (the quickstart's student learns it in a
/// few hundred steps), hard enough that a model must compute: it has to find both operands in the
/// question and know about 240 addition, subtraction and multiplication facts, not one template.

#include <cstdint>
#include <string>
#include <vector>

#include "distill/detail/rng.hpp"

namespace distill::data {

/// One word problem: the question, its worked solution, and the exact numeric answer.
struct MathProblem {
    std::string question;
    std::string solution;
    std::int64_t answer = 0;
};

/// `count` problems from `seed`, a third each: addition of two numbers in 2..9, subtraction of a
/// number in 2..9 from one in 5..18 (never negative), multiplication of two numbers in 2..9, in a
/// handful of phrasings. The same seed gives the same problems on every platform.
inline std::vector<MathProblem> make_math_problems(std::uint64_t seed, std::size_t count) {
    static const char* names[] = {"Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal"};
    static const char* things[] = {"apples", "pens", "cards", "eggs", "coins", "books"};
    Rng rng(seed);
    auto pick = [&](auto& list) { return list[rng.below(sizeof(list) / sizeof(list[0]))]; };
    auto num = [&](int lo, int hi) { return lo + static_cast<std::int64_t>(rng.below(std::uint64_t(hi - lo + 1))); };
    std::vector<MathProblem> out;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        const std::string who = pick(names), what = pick(things);
        MathProblem p;
        switch (rng.below(3)) {
            case 0: {
                const auto a = num(2, 9), b = num(2, 9);
                p.question = who + " has " + std::to_string(a) + " " + what + " and gets " + std::to_string(b) +
                             " more. How many " + what + " now?";
                p.answer = a + b;
                p.solution = std::to_string(a) + "+" + std::to_string(b) + "=" + std::to_string(p.answer) + ".";
                break;
            }
            case 1: {
                auto a = num(5, 18), b = num(2, 9);
                if (b > a) std::swap(a, b);
                p.question = who + " has " + std::to_string(a) + " " + what + " and gives away " + std::to_string(b) +
                             ". How many are left?";
                p.answer = a - b;
                p.solution = std::to_string(a) + "-" + std::to_string(b) + "=" + std::to_string(p.answer) + ".";
                break;
            }
            default: {
                const auto a = num(2, 9), b = num(2, 9);
                p.question = who + " buys " + std::to_string(a) + " bags of " + std::to_string(b) + " " + what +
                             ". How many " + what + " in all?";
                p.answer = a * b;
                p.solution = std::to_string(a) + "*" + std::to_string(b) + "=" + std::to_string(p.answer) + ".";
                break;
            }
        }
        p.solution += " The answer is " + std::to_string(p.answer) + ".";
        out.push_back(std::move(p));
    }
    return out;
}

}  // namespace distill::data
