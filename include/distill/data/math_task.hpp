#pragma once
/// @file math_task.hpp
/// The built-in math reasoning task of the quickstart: arithmetic word problems generated from a
/// seed, each with an exact answer and a one-line worked solution ("7+5=12. The answer is 12.").
/// Small enough for byte-level models trained in minutes (the quickstart's student learns it in a
/// few hundred steps), hard enough that a model must compute: it has to find both operands in the
/// question and know about 240 addition, subtraction and multiplication facts, not one template.
/// A fourth operation, exact division, none of the default problems pose: a teacher trained on
/// another operation set (`make_math_problems(seed, count, ops)`) knows what the quickstart's does not
/// (the multi-teacher example, examples/multi_teacher.cpp).

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "distill/error.hpp"

#include "distill/detail/rng.hpp"

namespace distill::data {

/// The operations a problem can pose.
enum class MathOp { add, sub, mul, div };

/// "add", "sub", "mul", "div".
inline std::string_view math_op_name(MathOp op) {
    switch (op) {
        case MathOp::add:
            return "add";
        case MathOp::sub:
            return "sub";
        case MathOp::mul:
            return "mul";
        default:
            return "div";
    }
}

/// The operation named `name` ("add", "sub", "mul", "div"); config_error naming `field` otherwise.
inline MathOp parse_math_op(std::string_view name, const std::string& field = "op") {
    for (MathOp op : {MathOp::add, MathOp::sub, MathOp::mul, MathOp::div})
        if (math_op_name(op) == name) return op;
    throw config_error(field, "expected \"add\", \"sub\", \"mul\" or \"div\", got \"" + std::string(name) + "\"");
}

/// One word problem: the question, its worked solution, the exact numeric answer and its operation.
struct MathProblem {
    std::string question;
    std::string solution;
    std::int64_t answer = 0;
    MathOp op = MathOp::add;
};

/// The quickstart's operations: addition, subtraction, multiplication.
inline constexpr MathOp default_math_ops[] = {MathOp::add, MathOp::sub, MathOp::mul};

/// `count` problems from `seed`, each operation of `ops` equally likely: addition of two numbers in
/// 2..9, subtraction of a number in 2..9 from one in 5..18 (never negative), multiplication of two
/// numbers in 2..9, exact division of a product of two numbers in 2..9 by one of them, in a handful of
/// phrasings. The same seed and `ops` give the same problems on every platform; the default `ops`
/// gives the problems this function gave before `ops` existed, byte for byte (the draws are the same:
/// one `below(ops.size())` picks the operation). config_error when `ops` is empty.
inline std::vector<MathProblem> make_math_problems(std::uint64_t seed, std::size_t count,
                                                   std::span<const MathOp> ops = default_math_ops) {
    if (ops.empty()) throw config_error("ops", "names no operation");
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
        p.op = ops[rng.below(ops.size())];
        switch (p.op) {
            case MathOp::add: {
                const auto a = num(2, 9), b = num(2, 9);
                p.question = who + " has " + std::to_string(a) + " " + what + " and gets " + std::to_string(b) +
                             " more. How many " + what + " now?";
                p.answer = a + b;
                p.solution = std::to_string(a) + "+" + std::to_string(b) + "=" + std::to_string(p.answer) + ".";
                break;
            }
            case MathOp::sub: {
                auto a = num(5, 18), b = num(2, 9);
                if (b > a) std::swap(a, b);
                p.question = who + " has " + std::to_string(a) + " " + what + " and gives away " + std::to_string(b) +
                             ". How many are left?";
                p.answer = a - b;
                p.solution = std::to_string(a) + "-" + std::to_string(b) + "=" + std::to_string(p.answer) + ".";
                break;
            }
            case MathOp::mul: {
                const auto a = num(2, 9), b = num(2, 9);
                p.question = who + " buys " + std::to_string(a) + " bags of " + std::to_string(b) + " " + what +
                             ". How many " + what + " in all?";
                p.answer = a * b;
                p.solution = std::to_string(a) + "*" + std::to_string(b) + "=" + std::to_string(p.answer) + ".";
                break;
            }
            case MathOp::div: {
                const auto q = num(2, 9), b = num(2, 9);
                p.question = who + " shares " + std::to_string(q * b) + " " + what + " equally among " +
                             std::to_string(b) + " friends. How many " + what + " each?";
                p.answer = q;
                p.solution = std::to_string(q * b) + "/" + std::to_string(b) + "=" + std::to_string(q) + ".";
                break;
            }
        }
        p.solution += " The answer is " + std::to_string(p.answer) + ".";
        out.push_back(std::move(p));
    }
    return out;
}

}  // namespace distill::data
