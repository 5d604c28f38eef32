#pragma once
/// @file text_tasks.hpp
/// Seeded, templated tasks for the four text task types besides math (`nli`, `qa`, `conversation`,
/// `summarization`): each small enough for the byte-level models of the examples to learn in
/// minutes, and each needing what the real task needs — comparing two sentences, finding a span,
/// recalling facts and copying the user's words, picking the key facts out of distractors. The
/// examples ship a teacher trained on each (examples/train_teacher --task).
///
/// - nli: "Premise: Ann has a red cup.\nHypothesis: Someone has a red cup." → "entailment",
///   "neutral" or "contradiction";
/// - qa: "Ann owns a cat. Ann is a cook. Ann lives in Oslo.\nQuestion: What is Ann's job?" → "cook",
///   a span of the passage;
/// - conversation: "Hi, I am Ann. When does the pool open?" → "Hello Ann! The pool opens at 7.";
/// - summarization: three sentences (a trip, a purchase, the weather) in any order → "Ann bought 3
///   cups at the market."
///
/// The same seed gives the same examples on every platform (data/math_task.hpp's generator).

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "distill/data/math_task.hpp"
#include "distill/detail/rng.hpp"
#include "distill/error.hpp"

namespace distill::data {

/// One example of a text task: the user's prompt and the reference response.
struct TaskExample {
    std::string prompt;
    std::string response;
};

namespace detail_tasks {

inline constexpr std::array<const char*, 8> names = {"Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal"};
inline constexpr std::array<const char*, 6> colors = {"red", "blue", "green", "black", "white", "pink"};
inline constexpr std::array<const char*, 6> objects = {"cup", "hat", "ball", "book", "kite", "lamp"};
inline constexpr std::array<const char*, 8> cities = {"Oslo", "Rome", "Lima", "Kyiv", "Doha", "Baku", "Riga", "Bern"};

/// A uniform pick from `list`, different from `other` when given (index into the list).
template <class List>
std::size_t pick(Rng& rng, const List& list, std::size_t other = std::size_t(-1)) {
    for (;;) {
        const auto i = static_cast<std::size_t>(rng.below(list.size()));
        if (i != other) return i;
    }
}

}  // namespace detail_tasks

/// `count` NLI examples from `seed`, labels balanced in turn (entailment, neutral, contradiction).
/// The premise says someone has a thing of one colour; the hypothesis is entailed when it names
/// the same person and thing with the same colour or none ("Someone" for the person also entails),
/// contradicts when it gives the same person and thing another colour or says they have none, and is
/// neutral when it is about another person or another thing.
inline std::vector<TaskExample> make_nli_examples(std::uint64_t seed, std::size_t count) {
    using namespace detail_tasks;
    Rng rng(seed);
    std::vector<TaskExample> out;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        const auto n = pick(rng, names), c = pick(rng, colors), o = pick(rng, objects);
        const std::string who = names[n], color = colors[c], thing = objects[o];
        std::string hypothesis, label;
        switch (i % 3) {
            case 0:
                label = "entailment";
                switch (rng.below(3)) {
                    case 0:
                        hypothesis = who + " has a " + thing + ".";
                        break;
                    case 1:
                        hypothesis = "Someone has a " + color + " " + thing + ".";
                        break;
                    default:
                        hypothesis = who + " has a " + color + " " + thing + ".";
                        break;
                }
                break;
            case 1:
                label = "neutral";
                if (rng.below(2) == 0)
                    hypothesis = std::string(names[pick(rng, names, n)]) + " has a " + color + " " + thing + ".";
                else
                    hypothesis = who + " has a " + color + " " + objects[pick(rng, objects, o)] + ".";
                break;
            default:
                label = "contradiction";
                if (rng.below(2) == 0)
                    hypothesis = who + " has no " + thing + ".";
                else
                    hypothesis = who + " has a " + colors[pick(rng, colors, c)] + " " + thing + ".";
                break;
        }
        out.push_back(
            {"Premise: " + who + " has a " + color + " " + thing + ".\nHypothesis: " + hypothesis, std::move(label)});
    }
    return out;
}

/// `count` extractive QA examples from `seed`: a passage of three facts about one person — their
/// job, their city and their pet, in any order ("Ann owns a cat. Ann is a cook. Ann lives in Oslo.")
/// — and a question about one of them ("What pet does Ann own?", "What is Ann's job?", "Where does
/// Ann live?") whose answer is a span of the passage. The words come from lists larger than a model
/// would memorize per question, so the answer must be found and copied.
inline std::vector<TaskExample> make_qa_examples(std::uint64_t seed, std::size_t count) {
    using namespace detail_tasks;
    static constexpr std::array<const char*, 10> jobs = {"cook",   "nurse",  "pilot",  "baker", "judge",
                                                         "tailor", "farmer", "singer", "miner", "clerk"};
    static constexpr std::array<const char*, 10> pets = {"cat",  "dog",  "owl",   "goat",  "fox",
                                                         "frog", "duck", "mouse", "horse", "snake"};
    Rng rng(seed);
    std::vector<TaskExample> out;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        const std::string who = names[pick(rng, names)];
        const std::string job = jobs[pick(rng, jobs)], city = cities[pick(rng, cities)], pet = pets[pick(rng, pets)];
        std::array<std::string, 3> facts = {who + " is a " + job + ".", who + " lives in " + city + ".",
                                            who + " owns a " + pet + "."};
        for (std::size_t k = 2; k > 0; --k) std::swap(facts[k], facts[rng.below(k + 1)]);  // Fisher-Yates
        const std::string passage = facts[0] + " " + facts[1] + " " + facts[2];
        switch (rng.below(3)) {
            case 0:
                out.push_back({passage + "\nQuestion: What is " + who + "'s job?", job});
                break;
            case 1:
                out.push_back({passage + "\nQuestion: Where does " + who + " live?", city});
                break;
            default:
                out.push_back({passage + "\nQuestion: What pet does " + who + " own?", pet});
                break;
        }
    }
    return out;
}

/// `count` one-turn dialogues from `seed`: a user greets with their name and asks when a place
/// opens or whether it opens on a weekday; the assistant greets them back by name and answers from
/// a fixed timetable (the facts the model must learn).
inline std::vector<TaskExample> make_conversation_examples(std::uint64_t seed, std::size_t count) {
    using namespace detail_tasks;
    static constexpr std::array<const char*, 6> places = {"pool", "bank", "museum", "library", "bakery", "gym"};
    static constexpr std::array<int, 6> opens = {7, 9, 10, 8, 6, 5};
    static constexpr std::array<const char*, 6> closed_on = {"Monday", "Sunday", "Tuesday",
                                                             "Sunday", "Monday", "Friday"};
    static constexpr std::array<const char*, 4> days = {"Monday", "Sunday", "Tuesday", "Friday"};
    static constexpr std::array<const char*, 3> greetings = {"Hi", "Hello", "Hey"};
    Rng rng(seed);
    std::vector<TaskExample> out;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        const std::string who = names[pick(rng, names)];
        const auto p = pick(rng, places);
        const std::string place = places[p];
        std::string prompt = std::string(greetings[pick(rng, greetings)]) + ", I am " + who + ". ";
        std::string response;
        if (rng.below(2) == 0) {
            prompt += "When does the " + place + " open?";
            response = "Hello " + who + "! The " + place + " opens at " + std::to_string(opens[p]) + ".";
        } else {
            const std::string day = days[pick(rng, days)];
            prompt += "Is the " + place + " open on " + day + "?";
            response = day == closed_on[p] ? "Sorry " + who + ", the " + place + " is closed on " + day + "."
                                           : "Yes " + who + ", the " + place + " is open on " + day + ".";
        }
        out.push_back({std::move(prompt), std::move(response)});
    }
    return out;
}

/// `count` short reports from `seed` with their one-sentence summaries: three sentences — where
/// someone went, what they bought, the weather — in a random order; the summary keeps who, how many
/// of what, and where ("Ann bought 3 cups at the market.") and drops the weather.
inline std::vector<TaskExample> make_summarization_examples(std::uint64_t seed, std::size_t count) {
    using namespace detail_tasks;
    static constexpr std::array<const char*, 5> shops = {"market", "mall", "fair", "store", "kiosk"};
    static constexpr std::array<const char*, 4> weather = {"It was sunny.", "It rained all day.", "It was cold.",
                                                           "The wind was strong."};
    static constexpr std::array<const char*, 3> days = {"Monday", "Friday", "Sunday"};
    Rng rng(seed);
    std::vector<TaskExample> out;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        const std::string who = names[pick(rng, names)], shop = shops[pick(rng, shops)];
        const std::string thing = objects[pick(rng, objects)];
        const auto k = 2 + static_cast<int>(rng.below(8));
        std::array<std::string, 3> sentences = {
            who + " went to the " + shop + " on " + days[pick(rng, days)] + ".",
            "There " + who + " bought " + std::to_string(k) + " " + thing + "s.",
            weather[pick(rng, weather)],
        };
        // any order but the purchase's "There" after the trip
        switch (rng.below(3)) {
            case 0:
                break;
            case 1:
                std::swap(sentences[1], sentences[2]);
                break;
            default:
                std::rotate(sentences.begin(), sentences.begin() + 2, sentences.end());
                break;
        }
        out.push_back({sentences[0] + " " + sentences[1] + " " + sentences[2],
                       who + " bought " + std::to_string(k) + " " + thing + "s at the " + shop + "."});
    }
    return out;
}

/// The examples of `task_type` ("math", "nli", "qa", "conversation", "summarization") from `seed`;
/// math's are make_math_problems' questions and worked solutions.
inline std::vector<TaskExample> make_task_examples(std::string_view task_type, std::uint64_t seed, std::size_t count) {
    if (task_type == "math") {
        std::vector<TaskExample> out;
        out.reserve(count);
        for (auto& p : make_math_problems(seed, count)) out.push_back({std::move(p.question), std::move(p.solution)});
        return out;
    }
    if (task_type == "nli") return make_nli_examples(seed, count);
    if (task_type == "qa") return make_qa_examples(seed, count);
    if (task_type == "conversation") return make_conversation_examples(seed, count);
    if (task_type == "summarization") return make_summarization_examples(seed, count);
    throw config_error("task", "expected \"math\", \"nli\", \"qa\", \"conversation\" or \"summarization\", got \"" +
                                   std::string(task_type) + "\"");
}

}  // namespace distill::data
