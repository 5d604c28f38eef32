// The installed package's distill::http target: an OpenAI-compatible teacher compiles, links against
// cpp-httplib with the right flags, and constructs (no request is sent).
#include <distill/teacher/openai.hpp>

#include <cstdio>

int main() {
    distill::teacher::OpenAI<> teacher({.base_url = "http://127.0.0.1:9", .model = "m"});
    std::printf("consumer_http: %s\n", teacher.name().c_str());
    return 0;
}
