// Every update rule, and the list the engine and bindings iterate over.
#pragma once
#include "rules/adadelta.h"
#include "rules/adafactor.h"
#include "rules/adagrad.h"
#include "rules/adam.h"
#include "rules/adamax.h"
#include "rules/adan.h"
#include "rules/ftrl.h"
#include "rules/lamb.h"
#include "rules/lion.h"
#include "rules/muon.h"
#include "rules/nadam.h"
#include "rules/rmsprop.h"
#include "rules/schedule_free_adamw.h"
#include "rules/sgd.h"

#include <type_traits>

// X(RuleType): the order here is the rule id used across the engine, the C
// API and every adapter (append new rules: ids are part of the C ABI). Each
// rule's facts live in its header: kName, kHyperNames, kHyperDefaults
// (Keras's defaults; kRequired: no default), kStateNames (Keras's slot names,
// in order), validate(), and optionally the traits below.
#define FUSEDOPT_FOR_EACH_RULE(X)                                                        \
  X(Sgd) X(SgdMomentum) X(SgdNesterov) X(SgdDampened) X(Rmsprop) X(RmspropMomentum)      \
  X(RmspropCentered) X(RmspropCenteredMomentum) X(Adagrad) X(Adadelta) X(Adam)           \
  X(AdamAmsgrad) X(Adamax) X(Nadam) X(Ftrl) X(Lion) X(Lamb) X(Adafactor)                 \
  X(ScheduleFreeAdamW) X(MuonMomentum) X(Adan)

namespace fusedopt::rules {

// Optional per-rule traits, false unless the rule declares them.
template <class R, class = void> struct factored_states : std::false_type {};
template <class R>
struct factored_states<R, std::void_t<decltype(R::kFactoredStates)>>
    : std::bool_constant<R::kFactoredStates> {};
template <class R, class = void> struct needs_positive_learning_rate : std::false_type {};
template <class R>
struct needs_positive_learning_rate<R, std::void_t<decltype(R::kNeedsPositiveLearningRate)>>
    : std::bool_constant<R::kNeedsPositiveLearningRate> {};

}  // namespace fusedopt::rules
